"""Does the SMAE decoder use the sub-vector it is given? Its masked-LM loss on the same batches when the
first position holds the pair's own transformed sub-vector, a zero vector, or another row's vector. Equal
losses mean the decoder rebuilds the input from the visible tokens alone and ignores the vector.

    python benchmarks/smae_probe.py [--model checkpoints/minilm-smae] [--batches 4]

Writes benchmarks/results/train-minilm-nfcorpus/smae-probe.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adaretrieve.modeling.encoder import Encoder  # noqa: E402
from adaretrieve.training.checkpoint import load_state  # noqa: E402
from adaretrieve.training.losses import default_ladder  # noqa: E402
from adaretrieve.training.smae import SMAE, PretrainConfig, iter_batches, mask_tokens, word_groups  # noqa: E402
from benchmarks.train_minilm import SMAE as SMAE_ARGS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="checkpoints/minilm-smae")
    ap.add_argument("--batches", type=int, default=4)
    args = ap.parse_args()
    torch.manual_seed(0)
    enc = Encoder(args.model, device="cpu")
    pairs = default_ladder(enc.n_layers, enc.hidden_size)
    smae = SMAE(enc, pairs).eval()
    st = load_state(Path(args.model) / "checkpoint" / "state.pt")
    smae.head.load_state_dict(st["head"])
    smae.decoder.layer.load_state_dict(st["decoder"])
    cfg = PretrainConfig.from_file(None, SMAE_ARGS)
    batches = iter_batches(cfg, enc.tokenizer)
    res = {str(p): {"own": 0.0, "zero": 0.0, "other_row": 0.0} for p in pairs}
    with torch.no_grad():
        for i in range(args.batches):
            ids, mask, special = next(batches)
            gen = torch.Generator().manual_seed(1000 + i)
            groups = word_groups(ids, enc.tokenizer, special)
            e_ids, _ = mask_tokens(ids, mask, cfg.encoder_mask, enc.tokenizer, gen, special, groups)
            d_ids, d_lab = mask_tokens(ids, mask, cfg.decoder_mask, enc.tokenizer, gen, special, groups)
            hs = enc.hidden_states({"input_ids": e_ids, "attention_mask": mask}, enc.n_layers)
            for p in pairs:
                own = smae.head.transform(enc.pool(hs[p.layer], mask)[:, : p.dim])
                for name, first in (("own", own), ("zero", torch.zeros_like(own)), ("other_row", own.roll(1, 0))):
                    res[str(p)][name] += float(smae._mlm(smae.decoder(first, d_ids, mask), d_lab)) / args.batches
    out = {"model": args.model, "batches": args.batches, "decoder_mlm_loss": {k: {n: round(v, 4) for n, v in d.items()}
                                                                               for k, d in res.items()},
           "command": "python benchmarks/smae_probe.py " + " ".join(sys.argv[1:])}
    path = ROOT / "benchmarks" / "results" / "train-minilm-nfcorpus" / "smae-probe.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    for k, d in out["decoder_mlm_loss"].items():
        print(k, d)


if __name__ == "__main__":
    main()
