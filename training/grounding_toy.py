"""Can a model config learn to pick the object an expression names? A two-square toy.

    python training/grounding_toy.py --tokenizer runs/demo/tokenizer/tok.model --lr 1e-3

Each 64 px grey image holds `--objects` squares of different colours (red, green, blue, yellow);
the model is trained on `aref` alone: "<colour> square" -> that square's box. Every 100 steps it
prints `choice` (the share of held-out expressions whose own square's box the model finds more
likely than the other squares', teacher-forced) and `choice_blind` (the same with each expression
shown another image). With one square there is nothing to choose (the other candidate is a random
empty box): that checks plain localisation. With two, only colour tells them apart, so choice
rises above blind only once the decoder's cross-attention depends on the expression.

Why this exists: on the sample task no `tiny` run's REC choice beat its blind choice
(RESULTS.md, 2026-12-08); this separates "can the recipe learn expression-dependent attention at
all, and how soon" from everything else the sample task asks, in minutes. The model is the
training config's (`--config`, default training/configs/locca.py:tiny), with `--model key=value`
overrides. The optimiser is NOT the trainer's: optax.adamw (weight decay 1e-4 scaled by the rate)
with warmup + cosine and clip 1.0, where the trainer decays weights by 1e-4 per step whatever the
rate (training/optim.py); with the trainer's optimiser the two-square run at lr 1e-3 did not cross
by step 600 (RESULTS.md). Location targets are Gaussian with a fixed sigma of one bin.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COLOURS = {"red": (215, 30, 35), "green": (40, 160, 60), "blue": (40, 80, 210),
           "yellow": (240, 215, 35)}
SIZE = 64


def _overlaps(a, b) -> bool:
    return not (a[2] <= b[0] or a[0] >= b[2] or a[3] <= b[1] or a[1] >= b[3])


def sample(rng: np.random.Generator, n: int, objects: int = 2):
    """n toy examples: (images uint8[n, 64, 64, 3], [(phrase, box)] per image, candidate boxes
    per image with the named one first). Boxes are normalized (y1, x1, y2, x2). With objects == 1
    the second candidate is an empty place of the image."""
    names = list(COLOURS)
    images, rows, candidates = [], [], []
    for _ in range(n):
        image = np.full((SIZE, SIZE, 3), 128, np.uint8)
        colours = rng.choice(len(names), max(objects, 2), replace=False)
        boxes: list[tuple[float, ...]] = []
        while len(boxes) < max(objects, 2):
            side = int(rng.integers(14, 24))
            y, x = (int(v) for v in rng.integers(0, SIZE - side, 2))
            box = (y / SIZE, x / SIZE, (y + side) / SIZE, (x + side) / SIZE)
            if any(_overlaps(box, b) for b in boxes):
                continue
            if len(boxes) < objects:
                image[y:y + side, x:x + side] = COLOURS[names[colours[len(boxes)]]]
            boxes.append(box)
        named = int(rng.integers(objects))
        images.append(image)
        rows.append((f"{names[colours[named]]} square", boxes[named]))
        candidates.append([boxes[named]] + [b for i, b in enumerate(boxes) if i != named])
    return np.stack(images), rows, candidates


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokenizer", default="runs/demo/tokenizer/tok.model",
                   help="a tokenizer with location tokens (make demo writes this one)")
    p.add_argument("--config", default="training/configs/locca.py:tiny")
    p.add_argument("--model", default="", help="model overrides, e.g. dec_depth=4,posemb=learn")
    p.add_argument("--objects", type=int, default=2, help="squares per image (1 or more)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.0, help="peak rate (0: the config's)")
    p.add_argument("--eval_every", type=int, default=100)
    args = p.parse_args(argv)
    if not Path(args.tokenizer).exists():
        p.error(f"--tokenizer {args.tokenizer} not found: run `make demo` first or pass the "
                "tokenizer of your own run")
    if not 1 <= args.objects <= len(COLOURS):
        p.error(f"--objects must be in [1, {len(COLOURS)}]")

    import jax
    import optax

    from model import tasks
    from model.configs import get_config, parse_arg
    from model.locca import LocCa, init_params
    from model.tokenizer import Tokenizer
    from training import model_fns
    from training.configs import locca as locca_configs

    path, _, variant = args.config.partition(":")
    if Path(path).resolve() != Path(locca_configs.__file__).resolve():
        p.error("--config must be training/configs/locca.py:<variant>")
    train_cfg = locca_configs.get_config(variant or "tiny")
    tok = Tokenizer.load(args.tokenizer)
    fields = dict(train_cfg.model)
    try:
        fields.update(parse_arg(f"x,{args.model}")[1] if args.model else {})
        fields.update(vocab_size=tok.vocab_size, loc_start=tok.loc_start, num_loc=tok.num_loc,
                      image_size=SIZE)
        cfg = get_config(fields.pop("variant"), **fields)
    except ValueError as e:
        p.error(f"--model: {e}")
    model = LocCa(cfg)
    params = init_params(model, jax.random.key(0))
    lr = args.lr or float(train_cfg.optim.lr)
    warmup = min(100, args.steps // 5)
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(
        optax.warmup_cosine_decay_schedule(0.0, lr, warmup, args.steps), weight_decay=1e-4))
    state = opt.init(params)

    def rows_of(pairs):
        f = [tasks.format_task("aref", tok, max_len=cfg.max_len, phrase=ph, box=b)
             for ph, b in pairs]
        return (np.stack([x.inputs for x in f]), np.stack([x.targets for x in f]),
                np.stack([x.loss_mask for x in f]))

    @jax.jit
    def train_step(params, state, batch, key):
        def loss(p):
            return model_fns.loss_fn(p, model, batch, key, task_weights={"aref": 1.0},
                                     loc_sigma=1.0, loc_start=tok.loc_start, num_loc=tok.num_loc)

        (value, _), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, value

    @jax.jit
    def row_nll(params, images, inputs, targets):
        logits = model_fns.predict_logits(params, model, images, inputs)
        return model_fns.token_xent(logits, targets)

    test_images, test_rows, test_candidates = sample(np.random.default_rng(99), 200, args.objects)

    def choice(params, blind: bool) -> float:
        images = np.roll(test_images, 1, axis=0) if blind else test_images
        scores = []
        for c in range(len(test_candidates[0])):
            inputs, targets, mask = rows_of([(ph, cands[c]) for (ph, _), cands
                                             in zip(test_rows, test_candidates, strict=True)])
            nll = np.asarray(row_nll(params, images, inputs, targets))
            scores.append(-(nll * mask).sum(axis=1))
        scores = np.stack(scores, axis=1)
        return float(np.mean(scores[:, 0] > scores[:, 1:].max(axis=1)))

    rng = np.random.default_rng(0)
    start = time.time()
    for step in range(args.steps + 1):
        if step % args.eval_every == 0 or step == args.steps:
            print(f"step {step}: choice {choice(params, False):.2f} "
                  f"choice_blind {choice(params, True):.2f} ({time.time() - start:.0f} s)",
                  flush=True)
        if step == args.steps:
            break
        images, rows, _ = sample(rng, args.batch_size, args.objects)
        inputs, targets, mask = rows_of(rows)
        batch = {"image": images, "aref/inputs": inputs, "aref/targets": targets,
                 "aref/loss_mask": mask}
        params, state, _ = train_step(params, state, batch, jax.random.key(step))
    return 0


if __name__ == "__main__":
    sys.exit(main())
