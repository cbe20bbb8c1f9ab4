"""Shared test helpers (imported by the test modules; pytest puts this folder on the path)."""

import pytest
from ignite.engine import Events


class Interrupt(Exception):
    """A simulated crash of a training process."""


def crash_then_resume(build, epoch: int, iteration_in_epoch: int, after_crash=None):
    """Run ``build()`` until it crashes at ``iteration_in_epoch`` of ``epoch``, then run a fresh
    ``build()`` (a new process, as far as the trainer knows) to the end and return it.

    ``after_crash()`` runs between the two, to look at what the crash left on disk.
    """
    interrupted = build()

    @interrupted.on(Events.ITERATION_COMPLETED)
    def crash(engine):
        if engine.state.epoch == epoch and engine.state.iteration % engine.state.epoch_length == iteration_in_epoch:
            raise Interrupt()

    with pytest.raises(Interrupt):
        interrupted.run()
    if after_crash is not None:
        after_crash()
    resumed = build()
    resumed.run()
    return resumed
