"""Orbax checkpoints in a workdir: the latest state (to resume) and the best (to test).

`workdir/checkpoints/latest/<step>` and `workdir/checkpoints/best/<step>` each keep one
checkpoint. Orbax writes to a temporary directory and renames it when complete, so a run
killed during a save leaves the previous checkpoint intact and resumes from it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp


class Checkpointer:
  """Saves and restores `(state_tree, meta)`; meta is a JSON-able dict (epoch, best, ...)."""

  def __init__(self, workdir: str | Path):
    root = Path(workdir).resolve() / "checkpoints"
    opts = ocp.CheckpointManagerOptions(max_to_keep=1, create=True,
                                        enable_async_checkpointing=False)
    self._managers = {kind: ocp.CheckpointManager(root / kind, options=opts)
                      for kind in ("latest", "best")}

  def save(self, kind: str, step: int, tree: Any, meta: dict[str, Any]) -> None:
    mngr = self._managers[kind]
    if step in mngr.all_steps():
      # A resumed run replays the epochs after the latest checkpoint; a 'best' saved by the
      # killed run in that stretch is superseded by the replay's.
      mngr.delete(step)
    mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                            meta=ocp.args.JsonSave(meta)), force=True)
    mngr.wait_until_finished()

  def latest_step(self, kind: str) -> int | None:
    return self._managers[kind].latest_step()

  def restore(self, kind: str, template: Any) -> tuple[Any, dict[str, Any]] | None:
    """Restores the newest `kind` checkpoint into `template`'s structure, or None."""
    mngr = self._managers[kind]
    step = mngr.latest_step()
    if step is None:
      return None
    out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(template),
                                                     meta=ocp.args.JsonRestore()))
    return out["state"], dict(out["meta"])

  def close(self) -> None:
    for mngr in self._managers.values():
      mngr.close()
