"""Fine-tuning and evaluation, as the paper's protocol does them (section 4.1): AdamW with a
linear schedule after a linear warm-up, cross-entropy (MSE for STS-B's regression), gradient
clipping; and the GLUE metrics on the dev split, with each task's own head.

    training = finetune(encoder, head, batches_for_epoch, TrainSettings(epochs=2, lr=2e-3))
    score, metrics, predictions = evaluate(encoder, head, data.TASKS["sst2"], dev_batches)
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
from speed import fastpath


PROGRESS = True  # a progress bar per fine-tune; worker processes turn it off


class TrainingError(Exception):
    """Training or scoring that cannot go on: a loss, gradient, weight or output not finite."""


def to_device(batch, device, pinned=False):
    """The batch's tensors on `device`; `pinned` (with CUDA): copied from page-locked memory
    without waiting, beside the GPU's work."""
    if pinned and torch.cuda.is_available():
        return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
    return {k: v.to(device) for k, v in batch.items()}


def head_outputs(encoder, head, batch):
    """The head's outputs on one batch, (B, num_labels)."""
    hidden = encoder(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    return head(hidden, batch["attention_mask"])


def loss_fn(logits, labels):
    if logits.shape[-1] == 1:  # STS-B: regression on the similarity score
        return F.mse_loss(logits.squeeze(-1), labels.float())  # (B, 1) -> (B,)
    return F.cross_entropy(logits, labels)


def linear_schedule(step, n_warmup, total):
    """The learning-rate factor: linear warm-up to 1 over n_warmup steps, then linear decay to 0."""
    if step < n_warmup:
        return (step + 1) / n_warmup
    return max(0.0, (total - step) / max(1, total - n_warmup))


def autocast(device, enabled=True):
    """On a GPU, the forward pass in bfloat16 autocast (mixed precision: matrix products in
    bf16, weights, gradients and AdamW's state float32); off on a CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16,
                          enabled=enabled and str(device).startswith("cuda"))


@dataclass(frozen=True)
class TrainSettings:
    """How to fine-tune (a run's: study/config.py's --epochs, --lr, ...); on the encoder's device."""
    epochs: int
    lr: float
    weight_decay: float = 0.0   # AdamW's
    warmup: float = 0.06        # the fraction of the steps with a linear warm-up
    max_grad_norm: float = 1.0  # gradient clipping


def finetune(encoder, head, batches_for_epoch, settings, desc="train", choices=None):
    """Train the adapters and the head: AdamW, linear decay after a linear warm-up, as
    `settings` (TrainSettings) say. Returns how the loss moved: the mean over the first and the
    last quarter of the steps.

    The encoder's own weights are frozen (`lora.add_lora`); only A, B and the head learn.
    `batches_for_epoch(e)` returns the batches of epoch e (reshuffled with a seed per epoch).
    A loss, gradient or parameter that stops being finite ends training with a TrainingError
    naming the likely cause and its first step. Losses are read from the device every
    `choices.check_every` steps (speed/fastpath.py; a CPU: every step, before its update).
    """
    epochs, lr, device = settings.epochs, settings.lr, fastpath.device_of(encoder)
    choices = choices or fastpath.step_choices(device)
    params = [p for p in list(encoder.parameters()) + list(head.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=settings.weight_decay,
                                  fused=choices.fused_adamw or None)
    first_epoch = batches_for_epoch(0)
    total = epochs * len(first_epoch)
    n_warmup = int(settings.warmup * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: linear_schedule(step, n_warmup, total))
    encoder.train(); head.train()
    losses = []   # every step's loss, as read
    pending = []  # the steps not read yet: (loss, gradient norm) on the device, the batch
    with (tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, disable=not PROGRESS) as bar,
          fastpath.precision(encoder, device, choices)):
        for epoch in range(epochs):
            for batch in first_epoch if epoch == 0 else batches_for_epoch(epoch):
                on_device = to_device(batch, device, choices.pin_memory)
                with autocast(device):  # forward: encoder with LoRA, then the head; the loss
                    loss = loss_fn(head_outputs(encoder, head, on_device), on_device["labels"])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # gradients of A, B and the head only (W0 is frozen)
                norm = torch.nn.utils.clip_grad_norm_(params, settings.max_grad_norm)  # clip
                pending.append((loss.detach(), norm, batch))  # read later, in one go
                # a weight that stopped being finite shows in the next loss; the last step's,
                # in the check after the loop
                if len(pending) == choices.check_every:
                    read_steps(pending, losses, desc, total, lr)  # raises at a bad step
                    bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}", epoch=epoch + 1)
                optimizer.step()  # AdamW's update
                scheduler.step()  # the learning rate of the next step
                bar.update()
        read_steps(pending, losses, desc, total, lr)  # the steps since the last check
    if not torch.stack([torch.isfinite(p).all() for p in params]).all():  # one read of the device
        raise diverged(desc, "adapter", len(losses), total, lr, batch)
    encoder.eval(); head.eval()
    quarter = max(1, len(losses) // 4)
    return {"loss_start": sum(losses[:quarter]) / quarter, "loss_end": sum(losses[-quarter:]) / quarter,
            "steps": len(losses)}


def read_steps(pending, losses, desc, total, lr):
    """Read the pending steps' losses and gradient norms from the device, in one go, onto
    `losses`, and empty `pending`; a TrainingError at the first step whose loss or gradient
    norm is not finite (`diverged`)."""
    if not pending:
        return
    values = torch.stack([torch.stack([loss, norm]) for loss, norm, _ in pending]).tolist()  # (n, 2)
    for (loss, norm), (_, _, batch) in zip(values, pending):
        losses.append(loss)
        if not (math.isfinite(loss) and math.isfinite(norm)):
            raise diverged(desc, "loss" if not math.isfinite(loss) else "gradient norm",
                           len(losses), total, lr, batch)
    pending.clear()


def diverged(desc, what, step, total, lr, batch):
    """The error for a training step whose loss, gradient norm or updated weights are not
    finite, with its likely cause."""
    largest = batch["labels"].float().abs().max().item()
    if largest > 1e4:
        cause = f"the labels are extreme (up to {largest:.3g} in this batch)"
    elif step == 1 and what == "loss":
        cause = "the model's outputs are not finite before any update; check the checkpoint"
    else:
        cause = f"the learning rate is too high for this model; try a lower one than {lr:g}"
    return TrainingError(f"{desc}: the {what} became not finite at step {step} of {total}: {cause}")


def predict(encoder, head, batches, device="cpu", desc="predict", choices=None):
    """Class indices (or scores for STS-B) and gold labels over the batches, as lists. Outputs
    that are not finite are a TrainingError naming `desc`: a NaN has no class (argmax
    would call it class 0) and no score. `choices` (by default the device's,
    speed/fastpath.py): on a GPU in bf16 autocast, as training, and the outputs read from the
    device every `check_every` batches."""
    choices = choices or fastpath.step_choices(device)
    encoder.eval(); head.eval()
    preds, labels, pending = [], [], []
    with (torch.inference_mode(), autocast(device, choices.eval_autocast),
          fastpath.precision(encoder, device, choices)):
        for batch in batches:
            logits = head_outputs(encoder, head, to_device(batch, device, choices.pin_memory))
            pending.append(logits.float())  # (B, num_labels)
            labels += batch["labels"].tolist()  # from the host's copy: no wait for the device
            if len(pending) == choices.check_every:
                preds += read_outputs(pending, desc)
        preds += read_outputs(pending, desc)
    return preds, labels


def read_outputs(pending, desc):
    """The pending batches' predictions, read from the device in one go, and `pending`
    emptied; a TrainingError if any output is not finite."""
    if not pending:
        return []
    logits = torch.cat(pending)  # (sum of B, num_labels)
    pending.clear()
    if not torch.isfinite(logits).all():
        raise TrainingError(f"{desc}: the model's outputs are not finite (NaN or inf), "
                            f"so nothing can be scored")
    return (logits.squeeze(-1) if logits.shape[-1] == 1 else logits.argmax(-1)).tolist()  # (n,)


def evaluate(encoder, head, task, batches, device="cpu", desc="evaluate"):
    """(score x100 as the paper reports it, {metric: value}, the predictions in the order of
    `batches`)."""
    preds, labels = predict(encoder, head, batches, device, desc)
    metrics = data.glue_metrics(task, preds, labels)
    return data.main_score(task, metrics), metrics, preds
