"""The speed choices of a step (speed/fastpath.py's StepChoices): picked by the device, forced on
the CPU here, each held to the plain computation; and speed/count_step.py's counts of what a
step asks of the host."""

import contextlib
from dataclasses import replace

import pytest
import torch

import lora
import train
from speed import count_step, fastpath

CONFIG = count_step.roberta_large(layers=2, hidden=32, heads=4, intermediate=64)  # tiny RoBERTa


def tiny(choices, seed=0, num_labels=2):
    """A random tiny RoBERTa with LoRA (B not zero, so that it matters) and a head, ready for
    `choices`: (model, head)."""
    torch.manual_seed(seed)
    encoder = lora.BertEncoder(CONFIG)
    lora.add_lora(encoder, ("query", "value"), rank=4, alpha=8,
                  A_init=lora.random_As(encoder, ("query", "value"), 4, seed))
    for m in lora.lora_layers(encoder).values():
        torch.nn.init.normal_(m.B, std=0.02)
    head = lora.ClassificationHead(CONFIG.hidden_size, num_labels, "roberta", 0.1)
    return fastpath.speed_up(encoder, choices), fastpath.use_fast_dropout(head, choices)


def batches(n, size=6, length=10, padding=0.3, labels=None):
    """n padded batches (some rows short), each with its own random tokens."""
    out = [count_step.batch_of(CONFIG, size, length, padding, seed=i) for i in range(n)]
    for b, y in zip(out, labels or []):
        b["labels"] = torch.full((size,), y)
    return out


def test_the_device_picks_the_choices_and_either_can_be_forced():
    assert fastpath.step_choices("cpu") == fastpath.CPU == fastpath.StepChoices()
    assert fastpath.step_choices("cuda") is fastpath.GPU
    assert fastpath.step_choices(torch.device("cuda", 1)) is fastpath.GPU
    cpu_model, cpu_head = tiny(None)  # a CPU model: the CPU's choices
    assert isinstance(cpu_model, fastpath.Packed) and type(cpu_head.dropout) is fastpath.FastDropout
    gpu_model, gpu_head = tiny(fastpath.GPU)  # forced: the encoder itself, padded, fused attention
    assert type(gpu_model) is lora.BertEncoder and type(gpu_head.dropout) is torch.nn.Dropout
    assert all(b.attention is fastpath.fused_attention for b in gpu_model.layers)
    assert not any(isinstance(m, fastpath.FastDropout) for m in gpu_model.modules())
    with pytest.raises(ValueError, match="base_bf16 needs eval_autocast"):
        replace(fastpath.GPU, base_bf16=True, eval_autocast=False)


def test_fused_attention_equals_the_written_out_one():
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 5, 4, 9, 8, generator=g)  # 3 x (B, nh, T, hd)
    mask = torch.arange(9)[None, :] < torch.tensor([9, 1, 4, 7, 9])[:, None]  # (B, T)
    bias = lora.padding_bias(mask, torch.float32)
    off = torch.nn.Dropout(0.1).eval()
    plain = lora.attention(q, k, v, bias, off)
    assert (fastpath.fused_attention(q, k, v, bias, off) - plain).abs().max() < 1e-5
    # training: dropout on the attention weights, the others scaled by 1 / (1 - p), so that
    # with v = 1 each output is the kept weights' sum / (1 - p): 1 on average, not always
    torch.manual_seed(0)
    y = fastpath.fused_attention(q, k, torch.ones_like(v), bias, torch.nn.Dropout(0.5).train())
    assert abs(y.mean().item() - 1) < 0.05 and y.std() > 0.1


def test_the_gpu_encoder_equals_the_plain_one_forward_and_backward():
    """Hidden states on real tokens within 1e-5, LoRA gradients within 1e-4 relative (eval
    mode: no dropout, so both compute the same function)."""
    b = batches(1)[0]
    results = []
    for choices in (fastpath.CPU, fastpath.GPU):
        model, _ = tiny(choices)
        model.eval()
        hidden = model(b["input_ids"], b["token_type_ids"], b["attention_mask"])
        real = hidden[b["attention_mask"]]
        params = [p for p in model.parameters() if p.requires_grad]
        results.append((real.detach(), torch.autograd.grad((real ** 2).mean(), params)))
    (h_cpu, g_cpu), (h_gpu, g_gpu) = results
    assert (h_cpu - h_gpu).abs().max() < 1e-5
    assert all(torch.allclose(a, c, rtol=1e-4, atol=1e-7) for a, c in zip(g_cpu, g_gpu))


def plain_finetune(model, head, batches, lr):
    """train.finetune as it was before the step choices, on the CPU: a loss read every step."""
    params = [p for p in list(model.parameters()) + list(head.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    n_warmup = int(0.06 * len(batches))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: train.linear_schedule(step, n_warmup, len(batches)))
    model.train(); head.train()
    losses = []
    for batch in batches:
        loss = train.loss_fn(train.head_outputs(model, head, batch), batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        losses.append(loss.item())
        optimizer.step()
        scheduler.step()
    quarter = max(1, len(losses) // 4)
    return {"loss_start": sum(losses[:quarter]) / quarter, "loss_end": sum(losses[-quarter:]) / quarter,
            "steps": len(losses)}


@pytest.mark.parametrize("check_every", [1, 3])
def test_the_cpu_choices_train_exactly_as_before(check_every):
    """The same losses, adapter and head, bit for bit, on packed and padded batches; reading
    the losses every 3 steps instead of every step changes nothing either."""
    data = batches(4, padding=0.3) + batches(4, padding=0.0)  # packed, then padded
    trained = []
    for run in (lambda m, h: plain_finetune(m, h, data, 1e-3),
                lambda m, h: train.finetune(m, h, lambda e: data, train.TrainSettings(1, 1e-3),
                                            choices=replace(fastpath.CPU, check_every=check_every))):
        model, head = tiny(fastpath.CPU)
        torch.manual_seed(1)  # the dropout masks
        summary = run(model, head)
        trained.append((summary, lora.lora_state(model), head.state_dict()))
    (s0, lora0, head0), (s1, lora1, head1) = trained
    assert s0 == s1
    assert all(torch.equal(lora0[k], lora1[k]) for k in lora0)
    assert all(torch.equal(head0[k], head1[k]) for k in head0)


def test_without_dropout_the_gpu_choices_train_as_the_cpu_choices_do():
    """Fused attention, fused AdamW, losses read every 3 steps: the same training as the CPU's
    packed path, FastDropout aside (here off), within float rounding."""
    data = batches(4, padding=0.3) + batches(4, padding=0.0)
    trained = []
    for choices in (fastpath.CPU, replace(fastpath.GPU, check_every=3)):
        model, head = tiny(choices)
        for m in [*model.modules(), *head.modules()]:
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        summary = train.finetune(model, head, lambda e: data, train.TrainSettings(2, 1e-2), choices=choices)
        trained.append((summary, lora.lora_state(model)))
    (s0, lora0), (s1, lora1) = trained
    assert s0["steps"] == s1["steps"] == 16
    assert abs(s0["loss_start"] - s1["loss_start"]) < 1e-6 and abs(s0["loss_end"] - s1["loss_end"]) < 1e-6
    assert all((lora0[k] - lora1[k]).abs().max() < 1e-6 for k in lora0)


def test_a_gpu_step_between_checks_never_syncs_and_launches_less():
    gpu = replace(fastpath.GPU, check_every=3)
    steps, ops, syncs = count_step.count_steps(*tiny(gpu), batches(5, padding=0.05), gpu)
    assert [s.syncs for s in steps[:4]] == [0, 0, 1, 0]  # one read of 3 steps' losses at step 3
    # the run's only reads at the level of the dispatcher: the final check of the weights
    assert ops.names["aten::_local_scalar_dense"] == 1 and ops.names["aten::nonzero"] == 0
    assert syncs.names == {"tolist": 2, "__bool__": 1}  # 3 steps read at step 3, 2 at the end
    cpu_steps, _, _ = count_step.count_steps(*tiny(fastpath.CPU), batches(3, padding=0.05), fastpath.CPU)
    assert cpu_steps[1].syncs == 2  # whether to pack (a read of the mask), the loss and norm
    assert steps[1].kernels < cpu_steps[1].kernels


def test_the_packed_path_syncs_per_group():
    steps, _, _ = count_step.count_steps(*tiny(fastpath.CPU), batches(3, size=16, padding=0.4),
                                         fastpath.CPU)
    assert steps[1].syncs > 2 + 16 // 8  # the mask, each group's length, the loss


def diverging(n, bad, check_every):
    """Fine-tune a regression head for n steps whose labels are 1e30 (an infinite loss) at the
    steps in `bad`, with the GPU's choices reading every `check_every` steps. Returns the
    TrainingError and how many batches had been fetched when it was raised."""
    labels = [1e30 if step in bad else 1.0 for step in range(1, n + 1)]
    data = batches(n, labels=labels)
    fetched = []

    class Epoch(list):
        def __iter__(self):
            for b in list.__iter__(self):
                fetched.append(b)
                yield b

    model, head = tiny(replace(fastpath.GPU, check_every=check_every), num_labels=1)
    with pytest.raises(train.TrainingError) as error:
        train.finetune(model, head, lambda e: Epoch(data), train.TrainSettings(1, 1e-3),
                       choices=replace(fastpath.GPU, check_every=check_every))
    return str(error.value), len(fetched)


@pytest.mark.parametrize("n, bad, check_every, fetched", [
    (6, {3}, 2, 4),     # found at the check after step 4, naming step 3
    (6, {3, 4}, 2, 4),  # the first of two
    (6, {6}, 4, 6),     # after the last check: found at the end
    (6, {5}, 4, 6),     # the same, with a finite label (but NaN weights) at step 6
    (6, {3}, 1, 3),     # a check every step: found at once, as on a CPU
])
def test_a_non_finite_loss_names_its_first_step_at_the_next_check(n, bad, check_every, fetched):
    message, seen = diverging(n, bad, check_every)
    assert message == (f"train: the loss became not finite at step {min(bad)} of {n}: "
                       f"the labels are extreme (up to 1e+30 in this batch)")
    assert seen == fetched


def test_the_gpu_choices_score_as_the_cpu_choices_do():
    data = batches(5, padding=0.3)
    scored = {}
    for name, choices in (("cpu", fastpath.CPU), ("gpu", replace(fastpath.GPU, check_every=2))):
        for num_labels in (1, 2):
            model, head = tiny(choices, num_labels=num_labels)
            scored[name, num_labels] = train.predict(model, head, data, choices=choices)
    assert scored["cpu", 2] == scored["gpu", 2]  # the same classes, the same labels
    (p_cpu, y_cpu), (p_gpu, y_gpu) = scored["cpu", 1], scored["gpu", 1]
    assert y_cpu == y_gpu and max(abs(a - b) for a, b in zip(p_cpu, p_gpu)) < 1e-5
    model, head = tiny(fastpath.GPU)
    head.classifier.bias.data.fill_(float("nan"))
    with pytest.raises(train.TrainingError, match="outputs are not finite"):
        train.predict(model, head, data, choices=replace(fastpath.GPU, check_every=2))


def test_a_base_in_bf16_is_what_autocast_casts_it_to():
    """Under bf16 autocast (the CPU's here, a GPU's in a run) the frozen weights held in bf16
    give the very same outputs and LoRA gradients; afterwards they are float32 again, exactly,
    and A, B never left float32."""
    model, head = tiny(fastpath.CPU)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    b = batches(1, padding=0.0)[0]
    results = []
    for in_bf16 in (False, True):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the dropout masks
        with fastpath.base_in_bf16(model) if in_bf16 else contextlib.nullcontext():
            assert (model.layers[0].query.weight.dtype == torch.bfloat16) == in_bf16
            assert model.layers[0].query.A.dtype == torch.float32
            with torch.autocast("cpu", dtype=torch.bfloat16):
                hidden = model(b["input_ids"], b["token_type_ids"], b["attention_mask"])
            hidden.float().pow(2).mean().backward()
        results.append((hidden.detach(), [p.grad for p in model.parameters() if p.requires_grad]))
    (h0, g0), (h1, g1) = results
    assert torch.equal(h0, h1) and all(torch.equal(a, c) for a, c in zip(g0, g1))
    after = model.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())


def test_pinned_copies_only_where_cuda_is():
    b = batches(1)[0]
    moved = train.to_device(b, "cpu", pinned=True)  # no CUDA here: an ordinary copy
    assert moved.keys() == b.keys() and all(torch.equal(moved[k], b[k]) for k in b)


def test_the_count_script_prints_a_row_per_choice(capsys):
    count_step.main(["--layers", "2", "--hidden", "32", "--heads", "4", "--intermediate", "64",
                     "--batch", "8", "--length", "8", "--autocast"])
    rows = {line[:26].strip(): line[26:].split()[:3] for line in capsys.readouterr().out.splitlines()[2:]}
    assert list(rows) == ["CPU choices (today's)", "GPU choices, forced", "a step with a check",
                          "in bf16 autocast", "and the base in bf16"]
    assert [r[2] for r in rows.values()] == ["2", "0", "1", "0", "0"]  # host syncs
