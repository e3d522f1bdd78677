// The dashboard's charts, drawn with the vendored Chart.js from the JSON the server embedded.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("dashboard-data").textContent);
  const palette = ["#2563eb", "#16a34a", "#f59e0b", "#dc2626", "#7c3aed", "#0891b2",
    "#db2777", "#65a30d", "#ea580c", "#475569"];
  // Drawn at once: the page is read, not watched, and a finished canvas is what tests check.
  Chart.defaults.animation = false;
  Chart.defaults.maintainAspectRatio = false;

  function chart(id, config) {
    return new Chart(document.getElementById(id), config);
  }

  chart("chart-volume", {
    data: {
      labels: data.days,
      datasets: [
        { type: "bar", label: "Jobs", data: data.jobs, backgroundColor: "#93c5fd", yAxisID: "jobs",
          order: 2 },
        { type: "line", label: "Audio minutes", data: data.audio_minutes, borderColor: "#16a34a",
          backgroundColor: "#16a34a", yAxisID: "minutes", order: 1 },  // drawn over the bars
      ],
    },
    options: {
      scales: {
        jobs: { position: "left", beginAtZero: true, ticks: { precision: 0 },
          title: { display: true, text: "jobs" } },
        minutes: { position: "right", beginAtZero: true, grid: { drawOnChartArea: false },
          title: { display: true, text: "minutes" } },
      },
    },
  });

  chart("chart-processing", {
    type: "line",
    data: {
      labels: data.days,
      datasets: [
        { label: "p50 seconds", data: data.p50_seconds, borderColor: "#2563eb", backgroundColor: "#2563eb" },
        { label: "p95 seconds", data: data.p95_seconds, borderColor: "#dc2626", backgroundColor: "#dc2626" },
      ],
    },
    options: { spanGaps: true, scales: { y: { beginAtZero: true, title: { display: true, text: "seconds" } } } },
  });

  chart("chart-cache", {
    type: "line",
    data: {
      labels: data.days,
      datasets: [{ label: "Cache hits, % of transcripts", data: data.cache_hit_percent,
        borderColor: "#7c3aed", backgroundColor: "#7c3aed" }],
    },
    options: { spanGaps: true, scales: { y: { min: 0, max: 100 } } },
  });

  chart("chart-languages", {
    type: "doughnut",
    data: {
      labels: data.languages.labels,
      datasets: [{ data: data.languages.values, backgroundColor: palette }],
    },
    options: { plugins: { legend: { position: "right" } } },
  });

  chart("chart-refusals", {
    type: "bar",
    data: {
      labels: data.refusals.labels,
      datasets: [{ label: "Refused", data: data.refusals.values, backgroundColor: "#fbbf24" }],
    },
    options: { indexAxis: "y", scales: { x: { beginAtZero: true, ticks: { precision: 0 } } } },
  });

  chart("chart-failures", {
    type: "bar",
    data: {
      labels: data.failures.labels,
      datasets: [{ label: "Failed jobs", data: data.failures.values, backgroundColor: "#f87171" }],
    },
    options: { indexAxis: "y", scales: { x: { beginAtZero: true, ticks: { precision: 0 } } } },
  });

  chart("chart-users", {
    type: "bar",
    data: {
      labels: data.top_users.labels,
      datasets: [{ label: "Audio minutes", data: data.top_users.values, backgroundColor: "#60a5fa" }],
    },
    options: { indexAxis: "y", scales: { x: { beginAtZero: true } } },
  });
})();
