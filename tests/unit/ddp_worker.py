"""Run `train` or `pretrain` as one rank of a 2-process gloo group (spawned by the tests)."""

import hashlib
import os


def worker(rank: int, world: int, port: int, cfg_kwargs: dict, out_dir: str, kind: str = "train") -> None:
    os.environ.update({"WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    import torch

    torch.set_num_threads(1)
    if kind == "train":
        import adaretrieve.training.trainer as T

        summary = T.train(T.TrainConfig(**cfg_kwargs), progress=False)
    else:
        import adaretrieve.training.smae as T

        summary = T.pretrain(T.PretrainConfig(**cfg_kwargs), progress=False)
    # every rank must end with the same weights: gradients are averaged across ranks
    h = hashlib.sha256()
    model = T._last_model
    for _, t in sorted(model.state_dict().items()):
        h.update(t.detach().contiguous().view(torch.uint8).numpy().tobytes())
    with open(os.path.join(out_dir, f"rank{rank}.txt"), "w") as f:
        f.write(f"{h.hexdigest()} {summary['world_size']}\n")
    torch.distributed.destroy_process_group()
