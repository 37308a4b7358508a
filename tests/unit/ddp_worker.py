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


QUERIES = ["the cell gene", "cancer risk of the drug", "mouse brain study", "virus infection immune"]
PASSAGES = ["cell gene protein", "blood heart", "drug cancer risk trial", "dose level", "mouse brain immune",
            "study of patients", "virus immune therapy infection", "the a of and"]


def step_grads(model_path: str, rank: int = 0, world: int = 1, keep_full: float = 0.0) -> tuple[float, dict]:
    """One training step's loss and gradients on this rank's share of a fixed batch (all of it when
    world == 1): queries QUERIES[rank::...] in contiguous halves, each with its positive and one negative."""
    import torch

    from adaretrieve.modeling import Encoder
    from adaretrieve.training.losses import PairSampler, default_ladder
    from adaretrieve.training.trainer import TrainConfig, step_loss

    enc = Encoder(model_path, device="cpu")  # eval mode: no dropout, so processes are comparable
    n = len(QUERIES) // world
    qs = QUERIES[rank * n:(rank + 1) * n]
    ps = PASSAGES[2 * rank * n:2 * (rank + 1) * n]
    labels = [2 * i for i in range(n)]
    tok = enc.tokenizer
    qb = dict(tok(qs, padding="max_length", max_length=12, truncation=True, return_tensors="pt"))
    pb = dict(tok(ps, padding="max_length", max_length=12, truncation=True, return_tensors="pt"))
    ladder = default_ladder(enc.n_layers, enc.hidden_size)
    pairs = PairSampler("starbucks", ladder, enc.full_size).step_pairs()
    teacher = Encoder(model_path, device="cpu") if keep_full else None
    cfg = TrainConfig(keep_full=keep_full)
    torch.manual_seed(0)
    loss, _ = step_loss(enc, teacher, qb, pb, labels, pairs, sorted({s.layer for s, _ in pairs}), enc.full_size, cfg, 0.05,
                        rank, world)
    (loss * world).backward()
    grads = {}
    for name, p in enc.model.named_parameters():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        if world > 1:
            torch.distributed.all_reduce(g)
            g = g / world
        grads[name] = g.detach().clone()
    return float(loss.detach()), grads


def grad_worker(rank: int, world: int, port: int, model_path: str, out_dir: str, keep_full: float = 0.0) -> None:
    os.environ.update({"WORLD_SIZE": str(world), "RANK": str(rank), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    import torch

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    loss, grads = step_grads(model_path, rank, world, keep_full)
    torch.save({"loss": loss, "grads": grads}, os.path.join(out_dir, f"grads{rank}.pt"))
    torch.distributed.destroy_process_group()
