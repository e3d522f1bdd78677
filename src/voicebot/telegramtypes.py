"""aiogram's Telegram types, with each pydantic schema built when the type is first used.

`aiogram.types` declares its 400-odd models `defer_build`, then builds every one at import
(`model_rebuild(_types_namespace=...)` in a loop, for the forward references its modules import
only under TYPE_CHECKING). Each schema embeds the whole tree of the types it holds, so that loop
costs about 100 MB resident and 1.5 s of import, while a process validates a handful: `Update`
and the results of the methods it calls. `import_deferred()` imports aiogram with that loop
made a no-op, and gives pydantic the names the loop would have passed, so that it builds a
type's schema on first use (`Update` in about 60 ms), from the same names.
"""

from __future__ import annotations

import sys
from typing import Any

from pydantic import BaseModel

_TYPES_PACKAGE = "aiogram.types."


def import_deferred() -> bool:
    """Import aiogram with its types' schemas deferred; False where aiogram was already imported.

    Call it before anything imports aiogram (the command's entry, the test suite's package).
    Where aiogram changes how it builds its types, nothing is deferred and every type is built
    at import as before: slower to start and bigger, never wrong.
    """
    if "aiogram" in sys.modules:
        return False
    rebuild = BaseModel.__dict__["model_rebuild"]
    deferred: list[type[BaseModel]] = []
    namespace: dict[str, Any] | None = None  # the one aiogram passes every type

    def defer(cls: type[BaseModel], *args: Any, **kwargs: Any) -> bool | None:
        nonlocal namespace
        given = kwargs.get("_types_namespace")
        if given is not None and cls.__module__.startswith(_TYPES_PACKAGE):
            deferred.append(cls)
            namespace = given
            return None
        result: bool | None = rebuild.__func__(cls, *args, **kwargs)
        return result

    BaseModel.model_rebuild = classmethod(defer)  # type: ignore[method-assign,assignment]
    try:
        import aiogram.methods
    finally:
        BaseModel.model_rebuild = rebuild  # type: ignore[method-assign]
    if namespace is None:
        return True  # aiogram built its types itself
    # The methods whose fields hold a type that was not built yet are deferred too.
    methods = [
        cls
        for cls in vars(aiogram.methods).values()
        if isinstance(cls, type) and issubclass(cls, BaseModel) and not cls.__pydantic_complete__
    ]
    for cls in deferred:
        # A model built inside another takes the names of its own module: as if its imports
        # under TYPE_CHECKING had run.
        module = vars(sys.modules[cls.__module__])
        for name, value in namespace.items():
            module.setdefault(name, value)
    for cls in [*deferred, *methods]:
        # pydantic builds a deferred model from the namespace it was defined in, updated with
        # the locals of whatever frame first uses it; this one is applied last, so aiogram's
        # names win over a caller's, for the types it holds too.
        cls.__pydantic_parent_namespace__ = namespace
    return True


def build_now(*, updates: bool) -> tuple[type[BaseModel], ...]:
    """Build, now rather than on the first reply or update, what every process validates, and
    return the result models aiogram parametrizes for the usual calls: the caller holds them
    for as long as it runs.

    `Message` (what sending and editing return) first: built first, it is shared by the others;
    left to first use, each model holding it built its own copy, 50-60 ms apiece on the event
    loop. With `updates`, `Update` too. The results (`Response[Message]` and the like) must be
    held: aiogram asks pydantic for `Response[...]` on every call, and pydantic caches a
    parametrized model weakly, so one no one holds is built again (3-16 ms on a busy event
    loop) after every garbage collection: 67 times in one burst of 25 notes.
    """
    from aiogram.methods.base import Response
    from aiogram.types import File, Message, Update, User

    Message.model_rebuild()
    if updates:
        Update.model_rebuild()
    return (
        Response[Message],
        Response[Message | bool],
        Response[bool],
        Response[File],
        Response[User],
        Response[list[dict[str, Any]]],  # `polling.GetRawUpdates`
    )
