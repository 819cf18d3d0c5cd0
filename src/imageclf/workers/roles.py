"""What a worker is, from the queues it was started with (`-Q`): a model worker (its model's queues), a shadow
worker (shadow queues only) or a decoder (the jobs queue alone).

Read once in the worker's main process, before the pool forks, so that every pool process inherits the answer;
the model worker's hooks (workers.model.process) and the decoder's (workers.jobs.process) each act only for
their own kind. The launcher (`imageclf worker`) asks the same question of the queues it is about to give.
"""

from __future__ import annotations

from celery.signals import celeryd_init

from imageclf import settings

#: Exit status of a pool process that could not be set up (Celery starts another).
EXIT_SETUP_FAILED = 70

_model: str | None = settings.MODELS[0]
_role = "model"


def model_of_queues(queues: str | list[str] | None) -> str | None:
    """The model a worker started with `-Q queues` serves (None: a decoder; no -Q: the default model)."""
    if not queues:
        return settings.MODELS[0]
    names = [n.strip() for n in (queues.split(",") if isinstance(queues, str) else queues)]
    models = {n.split(".", 1)[1] for n in names
              if n.startswith((settings.INTERACTIVE_PREFIX, settings.BULK_PREFIX, settings.SHADOW_PREFIX))}
    if len(models) > 1:
        raise SystemExit(f"one worker serves one model; -Q names {sorted(models)}")
    return models.pop() if models else None


def shadow_only(queues: str | list[str] | None) -> bool:
    """Whether a worker started with `-Q queues` takes only shadow copies (a shadow worker, SHADOW_DEVICE)."""
    names = [n.strip() for n in (queues.split(",") if isinstance(queues, str) else queues or [])]
    return bool(names) and all(n.startswith(settings.SHADOW_PREFIX) for n in names)


def served_model_name() -> str | None:
    """The model this worker serves; None in a decoder."""
    return _model


def worker_role() -> str:
    """"model", or "shadow" for a worker that takes only shadow copies (SHADOW_DEVICE)."""
    return _role


@celeryd_init.connect
def note_role(options: dict | None = None, **_: object) -> None:
    """Runs in the worker's main process before the pool forks, so children inherit the answer."""
    global _model, _role
    queues = (options or {}).get("queues")
    _model = model_of_queues(queues)
    _role = "shadow" if shadow_only(queues) else "model"
