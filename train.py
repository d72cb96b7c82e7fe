"""Fine-tuning and evaluation, as the paper's protocol does them (section 4.1): AdamW with a
linear schedule after a linear warm-up, cross-entropy (MSE for STS-B's regression), gradient
clipping; and the GLUE metrics on the dev split, with each task's own head.

    training = finetune(encoder, head, batches_for_epoch, epochs=2, lr=2e-3)
    score, metrics = evaluate(encoder, head, data.TASKS["sst2"], dev_batches)
"""

import math

import torch
import torch.nn.functional as F
from tqdm import tqdm

import data


class TrainingError(Exception):
    """Training or scoring that cannot go on (a loss, gradient, weight or output that is not
    finite); the command line prints it as one line."""


def to_device(batch, device):
    return {k: v.to(device) for k, v in batch.items()}


def head_outputs(encoder, head, batch):
    """The head's outputs on one batch, (B, num_labels)."""
    hidden = encoder(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    return head(hidden, batch["attention_mask"])


def loss_fn(logits, labels):
    if logits.shape[-1] == 1:  # STS-B: regression on the similarity score
        return F.mse_loss(logits.squeeze(-1), labels.float())
    return F.cross_entropy(logits, labels)


def linear_schedule(step, n_warmup, total):
    """The learning-rate factor: linear warm-up to 1 over n_warmup steps, then linear decay to 0."""
    if step < n_warmup:
        return (step + 1) / n_warmup
    return max(0.0, (total - step) / max(1, total - n_warmup))


def autocast(device):
    """On a GPU, the forward pass in bfloat16 autocast: matrix products in bf16, while the
    weights, their gradients and AdamW's state stay float32 (as mixed-precision training
    does). Off on a CPU, where everything is float32."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=str(device).startswith("cuda"))


def finetune(encoder, head, batches_for_epoch, epochs, lr, weight_decay=0.0, warmup=0.06,
             max_grad_norm=1.0, device="cpu", desc="train", progress=True):
    """Train the adapters and the head: AdamW, linear decay after a linear warm-up.

    The encoder's own weights are frozen (`lora.add_lora`); only A, B and the head learn.
    `batches_for_epoch(e)` returns the batches of epoch e (reshuffled with a seed per epoch).
    On a GPU the forward pass runs in bf16 autocast (`autocast`). A loss, gradient or parameter
    that stops being finite ends training with a TrainingError naming the likely cause.
    Returns how the loss moved: the mean over the first and the last quarter of the steps.
    """
    params = [p for p in list(encoder.parameters()) + list(head.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    first_epoch = batches_for_epoch(0)
    total = epochs * len(first_epoch)
    n_warmup = int(warmup * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: linear_schedule(step, n_warmup, total))
    encoder.train(); head.train()
    losses = []
    with tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, disable=not progress) as bar:
        for epoch in range(epochs):
            for batch in first_epoch if epoch == 0 else batches_for_epoch(epoch):
                batch = to_device(batch, device)
                with autocast(device):
                    loss = loss_fn(head_outputs(encoder, head, batch), batch["labels"])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                losses.append(loss.item())
                # a weight that stopped being finite shows in the next loss; the last step's,
                # in the check after the loop
                if not (math.isfinite(losses[-1]) and torch.isfinite(norm)):
                    raise diverged(desc, "loss" if not math.isfinite(losses[-1]) else "gradient norm",
                                   len(losses), total, lr, batch)
                optimizer.step()
                scheduler.step()
                bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}", epoch=epoch + 1)
                bar.update()
    if not all(torch.isfinite(p).all() for p in params):
        raise diverged(desc, "adapter", len(losses), total, lr, batch)
    encoder.eval(); head.eval()
    quarter = max(1, len(losses) // 4)
    return {"loss_start": sum(losses[:quarter]) / quarter, "loss_end": sum(losses[-quarter:]) / quarter,
            "steps": len(losses)}


def diverged(desc, what, step, total, lr, batch):
    """The error for a training step whose loss, gradient norm or updated weights are not
    finite, with its likely cause."""
    largest = batch["labels"].float().abs().max().item()
    if largest > 1e4:
        cause = f"the labels are extreme (up to {largest:.3g} in this batch)"
    elif step == 1 and what == "loss":
        cause = "the model's outputs are not finite before any update; check the checkpoint"
    else:
        cause = f"the learning rate is too high for this model; try a lower --lr than {lr:g}"
    return TrainingError(f"{desc}: the {what} became not finite at step {step} of {total}: {cause}")


def predict(encoder, head, batches, device="cpu", desc="predict"):
    """Class indices (or scores for STS-B) and gold labels over the batches, as lists. Outputs
    that are not finite are a TrainingError naming `desc`: a NaN has no class (argmax
    would call it class 0) and no score."""
    encoder.eval(); head.eval()
    preds, labels = [], []
    with torch.inference_mode():
        for batch in batches:
            batch = to_device(batch, device)
            logits = head_outputs(encoder, head, batch)
            if not torch.isfinite(logits).all():
                raise TrainingError(f"{desc}: the model's outputs are not finite (NaN or inf), "
                                      f"so nothing can be scored")
            preds += (logits.squeeze(-1) if logits.shape[-1] == 1 else logits.argmax(-1)).tolist()
            labels += batch["labels"].tolist()
    return preds, labels


def evaluate(encoder, head, task, batches, device="cpu", desc="evaluate", keep_predictions=False):
    """(score x100 as the paper reports it, {metric: value}); with keep_predictions, also the
    predictions, in the order of `batches`."""
    preds, labels = predict(encoder, head, batches, device, desc)
    metrics = data.glue_metrics(task, preds, labels)
    return (data.main_score(task, metrics), metrics) + ((preds,) if keep_predictions else ())
