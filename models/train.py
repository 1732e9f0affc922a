"""Train a zoo model on the synthetic shapes dataset and write weights-only checkpoints.

``python -m dexport.models.train --model mask_rcnn_tiny --iters 3000 --out DIR`` starts
from the model's deterministic init (``zoo.get(name, weights=None)``), trains on the train
split, evaluates on val and writes ``DIR/NAME.safetensors`` (no pickle; loads with
``safetensors.torch.load_file``) and ``DIR/NAME.json`` (settings, measured AP, wall time
and the command). Everything is seeded: the same command on the same machine gives the
same weights.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time

import numpy as np
import torch
from safetensors.torch import save_file

from dexport.models.data import dataset_for_model
from dexport.models.evaluation import evaluate, format_table

__all__ = ["train", "lr_at", "save_weights", "main"]


def lr_at(it: int, iters: int, base_lr: float, warmup: int) -> float:
    """Linear warmup from 1% of ``base_lr``, then cosine decay to 1%: short schedules
    from scratch need the warmup to survive the first large gradients."""
    if it < warmup:
        return base_lr * (0.01 + 0.99 * it / warmup)
    progress = (it - warmup) / max(1, iters - warmup)
    return base_lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress)))


def save_weights(model: torch.nn.Module, path: str | os.PathLike) -> None:
    """Write the state dict as safetensors (cloned: safetensors refuses shared storage).

    No safetensors metadata: its header order is not stable, which would break
    byte-identical reruns; the json beside the weights carries the settings instead."""
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(tensors, str(path))


def train(
    model_name: str,
    iters: int,
    out_dir: str | os.PathLike,
    *,
    batch: int = 4,
    lr: float = 0.01,
    optimizer: str = "sgd",
    weight_decay: float = 1e-4,
    warmup: int = 100,
    clip: float = 10.0,
    seed: int = 0,
    image_size: int = 128,
    num_train: int = 2000,
    num_val: int = 200,
    threads: int = 1,
    log_every: int = 50,
    model: torch.nn.Module | None = None,
    command: str | None = None,
) -> dict:
    """Train ``model`` (default: the zoo's deterministic init of ``model_name``), evaluate
    it on val and write ``out_dir/model_name.{safetensors,json}``. Returns the json dict."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)  # samplers inside the model's losses draw from the global RNG
    if model is None:
        from dexport.models import zoo

        model = zoo.get(model_name, weights=None)
    train_set = dataset_for_model(model_name, "train", num_images=num_train, seed=seed,
                                  image_size=image_size)
    val_set = dataset_for_model(model_name, "val", num_images=num_val, seed=seed,
                                image_size=image_size)

    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {optimizer!r}")

    order = np.random.default_rng(seed)
    queue: list[int] = []
    model.train()
    start = time.perf_counter()
    window: dict[str, float] = {}
    for it in range(iters):
        while len(queue) < batch:
            queue += order.permutation(len(train_set)).tolist()
        indices, queue = queue[:batch], queue[batch:]
        losses = model([train_set[i] for i in indices])
        total = sum(losses.values())
        if not torch.isfinite(total):
            detail = ", ".join(f"{k}={float(v):.4g}" for k, v in losses.items())
            raise FloatingPointError(
                f"{model_name}: non-finite loss at iteration {it} ({detail}); "
                f"lower --lr (now {lr}) or lengthen --warmup (now {warmup})")
        for group in opt.param_groups:
            group["lr"] = lr_at(it, iters, lr, warmup)
        opt.zero_grad(set_to_none=True)
        total.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()

        for k, v in losses.items():
            window[k] = window.get(k, 0.0) + float(v.detach())
        window["loss"] = window.get("loss", 0.0) + float(total.detach())
        if (it + 1) % log_every == 0 or it + 1 == iters:
            count = (it % log_every) + 1
            parts = "  ".join(f"{k} {v / count:.3f}" for k, v in window.items())
            elapsed = time.perf_counter() - start
            print(f"iter {it + 1}/{iters}  {parts}  lr {opt.param_groups[0]['lr']:.5f}  "
                f"{elapsed / (it + 1):.2f} s/it", flush=True)
            window = {}
    train_seconds = time.perf_counter() - start

    model.eval()
    metrics = evaluate(model, val_set, batch_size=batch)
    print(format_table(metrics), flush=True)

    os.makedirs(out_dir, exist_ok=True)
    record = {
        "model": model_name,
        "iters": iters,
        "batch": batch,
        "lr": lr,
        "optimizer": optimizer,
        "weight_decay": weight_decay,
        "warmup": warmup,
        "clip": clip,
        "seed": seed,
        "image_size": image_size,
        "keypoints_only": train_set.keypoints_only,
        "train_images": len(train_set),
        "val_images": len(val_set),
        "threads": threads,
        "train_seconds": round(train_seconds, 1),
        "ap": {t: {m: (None if math.isnan(v) else round(v, 2)) for m, v in vals.items()}
               for t, vals in metrics.items()},
        "command": command,
        "eval_command": (f"python -m dexport.models.evaluation --model {model_name} "
                         f"--weights {os.path.join(out_dir, model_name + '.safetensors')} "
                         f"--num-images {len(val_set)} --image-size {image_size} --seed {seed}"),
        "torch": torch.__version__,
    }
    save_weights(model, os.path.join(out_dir, f"{model_name}.safetensors"))
    with open(os.path.join(out_dir, f"{model_name}.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    return record


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m dexport.models.train",
        description="Train a zoo model on the synthetic shapes dataset.")
    parser.add_argument("--model", required=True, help="zoo name, e.g. mask_rcnn_tiny")
    parser.add_argument("--iters", type=int, required=True)
    parser.add_argument("--out", required=True, help="directory for NAME.safetensors / NAME.json")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--clip", type=float, default=10.0, help="gradient norm clip; 0 = off")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--num-train", type=int, default=2000)
    parser.add_argument("--num-val", type=int, default=200)
    # One thread by default: on a shared, oversubscribed CPU two intra-op threads made a
    # tiny model's step 5-20x slower (they spin waiting for each other), never faster.
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    command = "python -m dexport.models.train " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    return train(
        args.model, args.iters, args.out, batch=args.batch, lr=args.lr,
        optimizer=args.optimizer, weight_decay=args.weight_decay, warmup=args.warmup,
        clip=args.clip, seed=args.seed, image_size=args.image_size, num_train=args.num_train,
        num_val=args.num_val, threads=args.threads, command=command)


if __name__ == "__main__":
    main()
