"""A second device on a machine without one: `FakeCuda` runs everything on the CPU while it
keeps track of which tensors a real run would have put on "cuda", and raises where an
operation would mix the two, as CUDA does ("Expected all tensors to be on the same device").

    with FakeCuda():
        osrm_min.main([..., "--device", "cuda"])   # fails where a CUDA run would

How a tensor's pretend device is known: a tensor made with device="cuda" (or a torch.device
of it), moved by .to("cuda") / .cuda() (modules too: Module.to moves each parameter by
Tensor.to and sets .data), or computed from such tensors is "cuda"; .cpu() and .to("cpu")
make it "cpu" again, as does everything made without a device (a generator's draw, a
torch.load, a torch.tensor of a list). A gradient has its parameter's device. Reading
`.device` or `.is_cuda` of a "cuda" tensor answers as CUDA would, so code that follows its
inputs' device (torch.zeros(..., device=x.device)) is followed too.

What CUDA allows across devices is allowed here: a 0-dim CPU tensor in an operation on CUDA
tensors, CPU index tensors in indexing, and copy_ from either side. Values are unchanged:
everything still runs on the CPU, so a run under FakeCuda gives the CPU run's numbers.
"""

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

CUDA = torch.device("cuda")
_TAG = "_fake_cuda_device"  # the attribute that marks a tensor as "on cuda"


def on_cuda(t):
    return getattr(t, _TAG, False)


def _tag(out, cuda):
    for t in tree_leaves(out):
        if isinstance(t, torch.Tensor):
            try:
                setattr(t, _TAG, cuda)
            except (AttributeError, RuntimeError):  # some internal tensors take no attributes
                pass
    return out


def _is_cuda(device):
    return device is not None and torch.device(device).type == "cuda"


def _as_cpu(device):
    return torch.device("cpu") if _is_cuda(device) else device


class DeviceMix(RuntimeError):
    """An operation that would mix CPU and CUDA tensors on a real GPU."""


_ALLOWED_ACROSS = {torch.Tensor.copy_, torch.Tensor.__getitem__,
                   torch._has_compatible_shallow_copy_type}  # (Module.to asks this)
_GETTERS = {torch.Tensor.device.__get__: lambda t: CUDA if on_cuda(t) else torch.device("cpu"),
            torch.Tensor.is_cuda.__get__: on_cuda}


class FakeCuda(TorchFunctionMode):
    """See the module's docstring."""

    def __enter__(self):
        self._saved = (torch.cuda.is_available, torch.cuda.device_count,
                       torch.cuda.is_bf16_supported, torch.nn.Parameter.__new__)
        torch.cuda.is_available = torch.cuda.is_bf16_supported = lambda *_, **__: True
        torch.cuda.device_count = lambda: 1  # (autocast on "cuda" then leaves CPU tensors alone)
        new = self._saved[3]
        # a Parameter is a new Python object on the same storage: it keeps the tensor's device
        torch.nn.Parameter.__new__ = lambda cls, data=None, requires_grad=True: _tag(
            new(cls, data, requires_grad), data is not None and on_cuda(data))
        return super().__enter__()

    def __exit__(self, *exc):
        (torch.cuda.is_available, torch.cuda.device_count, torch.cuda.is_bf16_supported,
         torch.nn.Parameter.__new__) = self._saved
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _GETTERS:
            return _GETTERS[func](args[0])
        if func in (torch.Tensor.grad.__get__, torch.Tensor.data.__get__):  # (method-wrappers: ==)
            return _tag(func(*args), on_cuda(args[0]))
        if func == torch.Tensor.data.__set__:
            func(*args)
            return _tag(args[0], on_cuda(args[1]))
        if func in (torch.Tensor.pin_memory, torch.Tensor.is_pinned):  # pinned host memory: host
            return _tag(args[0].clone(), False) if func == torch.Tensor.pin_memory else True
        if func in (torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.cpu):
            return self._move(func, args, kwargs)
        if "device" in kwargs and kwargs["device"] is not None:
            cuda = _is_cuda(kwargs["device"])
            return _tag(func(*args, **dict(kwargs, device=_as_cpu(kwargs["device"]))), cuda)
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        checked = tensors[:1] if func in _ALLOWED_ACROSS else [t for t in tensors if t.dim() > 0]
        places = {on_cuda(t) for t in checked}
        if len(places) > 1:
            names = getattr(func, "__qualname__", getattr(func, "__name__", str(func)))
            raise DeviceMix(f"{names}: tensors on cuda and on cpu (FakeCuda), shapes "
                            + ", ".join(f"{tuple(t.shape)} on {'cuda' if on_cuda(t) else 'cpu'}"
                                        for t in checked))
        out = func(*args, **kwargs)
        cuda = places.pop() if places else any(on_cuda(t) for t in tensors)
        if func == torch.Tensor.copy_:
            return out  # the destination keeps its device
        return _tag(out, cuda)

    def _move(self, func, args, kwargs):
        self_, rest = args[0], args[1:]
        if func is torch.Tensor.cuda or func is torch.Tensor.cpu:
            cuda = func is torch.Tensor.cuda
            return self_ if on_cuda(self_) == cuda else _tag(self_.clone(), cuda)
        if rest and isinstance(rest[0], torch.Tensor):  # .to(other): its device and dtype
            other = rest[0]
            out = func(self_, other.dtype, *rest[1:], **kwargs)
            if on_cuda(out) != on_cuda(other) and out is self_:
                out = out.clone()
            return _tag(out, on_cuda(other))
        device, *_ = torch._C._nn._parse_to(*rest, **{k: v for k, v in kwargs.items()
                                                      if k not in ("copy", "non_blocking")})
        if device is None:  # a change of dtype only: the device stays
            return _tag(func(*args, **kwargs), on_cuda(self_))
        rest = tuple(_as_cpu(a) if isinstance(a, (str, torch.device)) else a for a in rest)
        kwargs = {k: _as_cpu(v) if k == "device" else v for k, v in kwargs.items()}
        out = func(self_, *rest, **kwargs)
        cuda = _is_cuda(device)
        if out is self_ and on_cuda(self_) != cuda:  # a real move makes a new tensor
            out = out.clone()
        return _tag(out, cuda)
