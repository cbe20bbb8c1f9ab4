"""Ignite handlers of the DDAD bundle: per-member checkpoints with resume, a progress bar.

``MemberCheckpoints`` keeps, for every member of an ensemble, the two latest resumable checkpoints
(network, optimizer and trainer state) written atomically by Ignite's ``Checkpoint`` +
``DiskSaver`` at the end of every ``save_every`` epochs, and, when training completes, the
member's final weights as ``<module>_member<k>.pt`` (also atomic: written to a temporary file,
then renamed). On ``Events.STARTED`` it resumes an interrupted run from the newest epoch at which
every member of every module on the engine has an intact checkpoint: a file damaged outside the
bundle (a copy cut short, a disk error) costs one checkpoint interval, with a warning naming the
file, instead of the run.

Example (config)::

    {"_target_": "scripts.handlers.training.MemberCheckpoints", "ckpt_dir": "@ckpt_dir", "module": "ndm"}
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import ignite.distributed as idist
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import StatsHandler, TensorBoardStatsHandler

from ..runtime.checkpoints import CheckpointError, load_checkpoint
from ..runtime.files import torch_save_atomic

logger = logging.getLogger("ddad")
# Resumable checkpoints kept per member: the newest, and one to fall back to when it is damaged.
KEPT_CHECKPOINTS = 2


def final_weights_path(ckpt_dir, module: str, member: int) -> Path:
    return Path(ckpt_dir) / f"{module}_member{member}.pt"


def module_handlers(module: str, log_dir, ckpt_dir, save_every: int = 1, resume: bool = True) -> list:
    """A stage-1 module's handlers: its epoch loss in the log and in TensorBoard (``<module>_loss``,
    a scalar), and its ``MemberCheckpoints``. The NDM and the UDM take the same list."""
    tag = f"{module}_loss"

    def loss(output):
        return output[tag]

    return [
        StatsHandler(tag_name=tag, output_transform=loss, iteration_log=False),
        TensorBoardStatsHandler(log_dir=str(log_dir), tag_name=tag, output_transform=loss),
        MemberCheckpoints(ckpt_dir, module, save_every=save_every, resume=resume),
    ]


class MemberCheckpoints:
    """Resumable per-member checkpoints and final weights for an ``EnsembleTrainer``.

    Args:
        ckpt_dir: folder of the run's checkpoints.
        module: 'ndm' or 'udm' (file name prefix).
        save_every: epochs between resumable checkpoints.
        resume: load the last checkpoints at start when they exist.
        member_ids: the ensemble index of each of the engine's members, for a process that trains
            only some of them (``scripts.engines.distributed``); default ``0..len(members)-1``. File
            names always use these global indices, and only these members' files are touched.
    """

    def __init__(self, ckpt_dir, module: str, save_every: int = 1, resume: bool = True, member_ids=None):
        if save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {save_every}")
        self.ckpt_dir = Path(ckpt_dir)
        self.module = module
        self.save_every = save_every
        self.resume = resume
        self.member_ids = None if member_ids is None else [int(k) for k in member_ids]

    def _engine_members(self, engine: Engine) -> list[int]:
        """Positions in ``engine.members`` of this module's members (an engine may train both modules)."""
        modules = getattr(engine, "member_modules", None)
        if modules is None:
            return list(range(len(engine.members)))
        return [j for j, (module, _) in enumerate(modules) if module == self.module]

    def _global(self, k: int) -> int:
        """Ensemble index of the engine's k-th member."""
        return k if self.member_ids is None else self.member_ids[k]

    def _prefix(self, member: int) -> str:
        return f"{self.module}_member{self._global(member)}"

    def attach(self, engine: Engine) -> None:
        self.positions = self._engine_members(engine)
        if not self.positions:
            raise ValueError(f"{self.module}: the trainer holds no {self.module} members to checkpoint")
        if self.member_ids is not None and len(self.member_ids) != len(self.positions):
            raise ValueError(
                f"{self.module}: member_ids {self.member_ids} do not match the trainer's "
                f"{len(self.positions)} {self.module} members"
            )
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        # Ignite's DiskSaver writes on one rank only (rank 0 by default); this handler writes on the
        # process it is attached to, which under torchrun owns these members' files.
        saver = DiskSaver(str(self.ckpt_dir), require_empty=False, atomic=True, save_on_rank=idist.get_rank())
        for k in range(len(self.positions)):
            checkpoint = Checkpoint(
                self._objects(engine, self.positions[k]),
                saver,
                filename_prefix=self._prefix(k),
                n_saved=KEPT_CHECKPOINTS,
                global_step_transform=lambda e, _: e.state.epoch,
            )
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_every), checkpoint)
        # Checkpoints left by an earlier, interrupted process are not tracked by these Checkpoint
        # objects; drop the older ones once newer ones exist so a folder keeps KEPT_CHECKPOINTS per member.
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.save_every), self.remove_stale)
        engine.add_event_handler(Events.COMPLETED, self.save_final)
        self._register_resume(engine)

    def _register_resume(self, engine: Engine) -> None:
        """Join the engine's checkpointers (one per module) that resume together, from one epoch."""
        if not self.resume:
            return
        engine.resume_checkpointers = getattr(engine, "resume_checkpointers", []) + [self]
        engine.add_event_handler(Events.STARTED, self.load_latest)

    @staticmethod
    def _objects(engine: Engine, k: int) -> dict:
        """What the engine's member k's checkpoint holds: network, optimizer, trainer state and its LR schedule."""
        objects = {"network": engine.members[k], "optimizer": engine.optimizers[k], "trainer": engine}
        schedulers = getattr(engine, "schedulers", [])
        if schedulers:
            objects["scheduler"] = schedulers[k]
        return objects

    def saved_epochs(self, member: int) -> dict[int, Path]:
        """{epoch: path} of a member's resumable checkpoints on disk."""
        pattern = re.compile(rf"^{re.escape(self._prefix(member))}_checkpoint_(\d+)\.pt$")
        return {int(m.group(1)): p for p in self.ckpt_dir.glob("*.pt") if (m := pattern.match(p.name))}

    def latest(self, member: int) -> tuple[int, Path] | None:
        """(epoch, path) of a member's last resumable checkpoint, or None."""
        saved = self.saved_epochs(member)
        return (max(saved), saved[max(saved)]) if saved else None

    def remove_stale(self, engine: Engine) -> None:
        # With member_ids, other processes own the other members' files: leave those alone.
        members = r"\d+" if self.member_ids is None else "(?:" + "|".join(map(str, self.member_ids)) + ")"
        pattern = re.compile(rf"^{re.escape(self.module)}_member{members}_checkpoint_(\d+)\.pt$")
        found = [
            (int(m.group(1)), p)
            for p in self.ckpt_dir.glob(f"{self.module}_member*_checkpoint_*.pt")
            if (m := pattern.match(p.name))
        ]
        keep = sorted({epoch for epoch, _ in found if epoch <= engine.state.epoch})[-KEPT_CHECKPOINTS:]
        for epoch, path in found:
            if epoch < engine.state.epoch and epoch not in keep:
                path.unlink(missing_ok=True)

    def intact_states(self, epoch: int, device) -> tuple[list[dict] | None, bool]:
        """(every member's checkpoint of ``epoch`` loaded, or None with a warning; whether a file
        was damaged rather than missing)."""
        states = []
        for k in range(len(self.positions)):
            path = self.saved_epochs(k).get(epoch)
            if path is None:
                logger.warning("%s: member %d has no checkpoint of epoch %d", self.module, self._global(k), epoch)
                return None, False
            try:
                states.append(load_checkpoint(path, map_location=device, weights_only=False))
            except CheckpointError as error:
                logger.warning("%s: %s", self.module, error)
                return None, True
        return states, False

    def load_latest(self, engine: Engine) -> None:
        plan = getattr(engine, "resume_plan", None)
        if plan is None:  # the first module's handler chooses the epoch for all of them
            plan = engine.resume_plan = resume_plan(getattr(engine, "resume_checkpointers", [self]), engine)
        if plan["epoch"] is None:
            return
        max_epochs = engine.state.max_epochs
        for position, state in zip(self.positions, plan["states"][id(self)]):
            Checkpoint.load_objects(self._objects(engine, position), state)
        engine.resumed_epoch = plan["epoch"]
        # A longer schedule given on the command line wins over the one stored in the checkpoint.
        engine.state.max_epochs = max(max_epochs, engine.state.epoch)
        logger.info("%s: resumed all members from epoch %d in %s", self.module, engine.state.epoch, self.ckpt_dir)

    def save_final(self, engine: Engine) -> None:
        for k, position in enumerate(self.positions):
            net = engine.members[position]
            torch_save_atomic(net.state_dict(), final_weights_path(self.ckpt_dir, self.module, self._global(k)))
        logger.info("%s: final weights of %d members in %s", self.module, len(self.positions), self.ckpt_dir)


def resume_plan(checkpointers: list, engine: Engine) -> dict:
    """The newest epoch at which every member of every checkpointer has an intact checkpoint, and
    those states: ``{"epoch": e or None, "states": {id(checkpointer): [state per member]}}``.

    Without such an epoch: a fresh start when the only epoch on disk lacks some members' files (a
    run killed while its members were writing their first checkpoints: no epoch ever finished for
    the whole ensemble, so nothing is lost); a refusal when a file is damaged or the folder mixes
    epochs without a common one (files of different runs: someone should look at the folder)."""
    epochs = sorted({e for c in checkpointers for k in range(len(c.positions)) for e in c.saved_epochs(k)})
    damaged = False
    for epoch in reversed(epochs):
        found = {id(c): c.intact_states(epoch, engine.state.device) for c in checkpointers}
        states = {key: loaded for key, (loaded, _) in found.items()}
        damaged = damaged or any(bad for _, bad in found.values())
        if all(s is not None for s in states.values()):
            if epoch != epochs[-1]:
                logger.warning(
                    "resuming from epoch %d: the checkpoints of epoch %d are incomplete or damaged (above)",
                    epoch,
                    epochs[-1],
                )
            return {"epoch": epoch, "states": states}
    if not epochs:
        return {"epoch": None, "states": {}}
    folder = checkpointers[0].ckpt_dir
    if damaged or len(epochs) > 1:
        raise RuntimeError(
            f"no epoch among {epochs} has an intact checkpoint for every member in {folder} (warnings above); "
            "remove them or set resume to false to start over"
        )
    logger.warning(
        "starting from epoch 0: no epoch among %s has a checkpoint of every member in %s "
        "(an earlier run stopped while writing them)",
        epochs,
        folder,
    )
    return {"epoch": None, "states": {}}


class LossProgressBar:
    """tqdm progress bar over the iterations of an epoch, showing the running loss."""

    def __init__(self, module: str = "", enabled: bool = True):
        self.module = module
        self.enabled = enabled

    def attach(self, engine: Engine) -> None:
        if not self.enabled:
            return
        from ignite.handlers import ProgressBar

        bar = ProgressBar(persist=False, desc=self.module)
        bar.attach(engine, output_transform=lambda output: {"loss": output["loss"]})
