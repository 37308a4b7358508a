"""What training checkpoints share: every rank's random state, a safe loader, an atomic replace.

Checkpoint state files hold tensors, numbers, strings and tuples only and are read with
``torch.load(weights_only=True)``: a crafted ``state.pt`` cannot run code (pickle would)."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import torch

from adaretrieve.errors import AdaError


def gather_object(obj, world: int) -> list:
    """``obj`` from every rank, in rank order (a collective when world > 1)."""
    if world == 1:
        return [obj]
    out: list = [None] * world
    torch.distributed.all_gather_object(out, obj)
    return out


def rng_states(rank: int, world: int) -> list[dict]:
    """Every rank's torch (and CUDA) random state, gathered to all ranks (a collective: every rank
    must call it). Index i is rank i's state."""
    mine = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        mine["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return gather_object(mine, world)


def restore_rng(states: list[dict] | dict, rank: int) -> None:
    """Put this rank's random state back (a list saved by a run with as many ranks as this one)."""
    if isinstance(states, dict):  # older checkpoints: one state for every rank
        states = [states]
    if rank >= len(states):
        raise AdaError(f"the checkpoint was written by {len(states)} process(es); resume with the same number (this is rank {rank})")
    st = states[rank]
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(st["cuda"]))


def mark_incomplete(out: Path) -> None:
    """Mark ``out`` as a model being written (see ``modeling.encoder.INCOMPLETE``)."""
    from adaretrieve.modeling.encoder import INCOMPLETE

    out.mkdir(parents=True, exist_ok=True)
    (out / INCOMPLETE).write_text("training has not finished: its final model is not (all) written yet\n")


def mark_complete(out: Path) -> None:
    """Remove the mark once every file of the final model is written."""
    from adaretrieve.modeling.encoder import INCOMPLETE

    (out / INCOMPLETE).unlink(missing_ok=True)


def load_state(path: str | Path) -> dict:
    """``torch.load(path, weights_only=True)``; anything else in the file is refused in one line."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as e:
        raise AdaError(f"{path}: refusing to load a checkpoint that holds more than tensors and plain values "
                       f"({str(e).splitlines()[0][:120]})") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise AdaError(f"{path}: not a readable checkpoint ({str(e).splitlines()[0][:120]})") from None


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the complete ``tmp`` to ``final``; an existing ``final`` is moved aside first and removed
    only after the new one stands, so a crash in between leaves one of them, never neither."""
    old = final.with_name(final.name + ".old")
    if old.exists() and final.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def check_resume(saved: dict | None, now: dict, ignore: set[str], where: Path) -> None:
    """Refuse to continue a checkpoint written with other settings: the optimizer, schedule and data
    order in it follow the old ones, so the run would silently mix both while recording the new.
    ``ignore``: settings that do not change the result (how often to save, where, on which device)."""
    if saved is None:  # written before checkpoints recorded their settings: nothing to compare
        return
    changed = [f"{k} {saved.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(saved) | set(now))
               if k not in ignore and saved.get(k) != now.get(k)]
    if changed:
        raise AdaError(f"{where} was written with other settings ({'; '.join(changed)}); resume with the same settings, "
                       f"pass --no-resume to start over in this output, or choose another output")
