"""The statistic of Fisher merging (Matena & Raffel, "Merging Models with Fisher-Weighted
Averaging", NeurIPS 2022): the diagonal of each fine-tuned model's Fisher information, for the
dense weight W = W0 + s B A of every adapted layer (not for A and B apart, as every merge here
works on the dense update).

    F = (1/N) sum_x sum_y p(y|x) (d log p(y|x) / dW)^2       (entrywise square)

- The true Fisher, not the empirical one: the labels are the model's own predictions,
  weighted by their probabilities, summed exactly over the classes; the data's labels are
  not used.
- STS-B's regression is read as a Gaussian likelihood with unit variance around the model's
  output f(x), which gives F = (1/N) sum_x (df/dW)^2.
- Gradients are per example (batches of one), so that the square of a sum over examples is a
  sum of squares. W0 + s B A is additive in W0: the gradient with respect to W0, with the
  adapter in place, is the gradient with respect to the dense weight.

The references square per-batch gradients instead (cross terms between a batch's examples):
MergeLM's `fisher_merging` (yule-BUAA/MergeLM; FusionBench copies it) of sum_y sqrt(p) log p,
and of the data's MSE (an empirical Fisher) for regression; RegMean's `compute_fisher` (bloomberg/
dataless-model-merging) of the argmax label or the probability-weighted loss. The merge itself
(merge.fisher_merge) follows MergeLM's.
"""

import torch


def fisher_diagonal(encoder, head, examples, layers, device="cpu"):
    """{layer name: F (d_out x d_in)} for the model now in the encoder (its adapter in place)
    and its head, over `examples` (batches of one example each); `layers`: {name: module}.
    Returned on the CPU, where the adapters and their merges live (lora.lora_state)."""
    weights = {name: m.weight for name, m in layers.items()}
    for w in weights.values():
        w.requires_grad_(True)
    fisher = {name: torch.zeros_like(w, dtype=torch.float64) for name, w in weights.items()}
    encoder.eval(); head.eval()
    try:
        for batch in examples:
            batch = {k: v.to(device) for k, v in batch.items()}
            hidden = encoder(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
            out = head(hidden, batch["attention_mask"])[0]  # (num_labels,)
            if out.shape[0] == 1:  # regression: the square of the output's gradient
                terms = [(1.0, out[0])]
            else:  # classification: every class, weighted by its probability
                log_p = out.log_softmax(-1)
                terms = [(p.item(), log_p[c]) for c, p in enumerate(log_p.exp().detach())]
            for i, (weight, value) in enumerate(terms):
                grads = torch.autograd.grad(value, list(weights.values()),
                                            retain_graph=i < len(terms) - 1)
                for name, g in zip(weights, grads):
                    fisher[name] += weight * g.double() ** 2
    finally:
        for w in weights.values():
            w.requires_grad_(False)
    return {name: (f / len(examples)).cpu() for name, f in fisher.items()}  # beside the adapters
