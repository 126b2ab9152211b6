"""The CPU kernels behind model.py: convolutions as matrix products in time-major layout, the
first two convolutions block by block, the positional embedding's grouped convolution, dropout
masks, each with hand-written gradients for training; and for inference the int8 and bf16
products, attention in blocks, and float32 products through oneDNN (wav2vec2.precision applies
them).

model.py says what the network computes; this module says how a CPU computes parts of it fast.
The float kernels compute exactly what plain PyTorch operations would (tests/test_model.py checks
them against those); the int8 ones compute products of quantized numbers (tests/test_precision.py).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def plain_ops() -> bool:
    """True while the network is being traced for export (ONNX, torch.export): the kernels'
    Python loops and autograd Functions would be recorded as steps of a fixed size, so the
    network then runs plain PyTorch operations."""
    return torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting() or torch.jit.is_tracing()


def tap_rows(x: torch.Tensor, first_tap: int, taps: int, steps: int, stride: int) -> torch.Tensor:
    """Taps [first_tap, first_tap + taps) of every output step of a (time, channels) signal, as a
    (steps, taps * channels) matrix read in place: in time-major memory the taps of one step are
    contiguous and the next step starts stride * channels numbers later, so BLAS reads (and, for
    gradients, writes) it with that row pitch and no copy. With taps > stride the rows overlap,
    which BLAS cannot read: then they are copied."""
    channels = x.shape[1]
    rows = x.as_strided((steps, taps * channels), (stride * channels, 1), x.storage_offset() + first_tap * channels)
    return rows.contiguous() if taps > stride else rows


def tap_groups(kernel: int, stride: int, channels: int, written: bool = False) -> list[tuple[int, int]]:
    """(first tap, taps) of the matrix products of a convolution: `stride` taps at a time, whose
    rows do not overlap, or all at once for a one-channel input that is only read (not `written`,
    as an input gradient is), whose (steps, kernel) windows are small enough to copy into a single
    product."""
    if channels == 1 and not written:
        return [(0, kernel)]
    return [(tap, min(stride, kernel - tap)) for tap in range(0, kernel, stride)]


def time_major_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """A strided 1-D convolution of a (time, channels) signal as matrix products on in-place views.

    Taken a few taps at a time (tap_groups), the convolution is a few plain matrix products, with
    none of the copies (im2col) or layout changes a general convolution makes. The weight is
    tap-major, (kernel * channels, out_channels). Written into `out` (steps, out_channels) if given.
    """
    channels = x.shape[1]
    kernel = weight.shape[0] // channels
    steps = (x.shape[0] - kernel) // stride + 1
    for i, (tap, taps) in enumerate(tap_groups(kernel, stride, channels)):
        rows, part = tap_rows(x, tap, taps, steps, stride), weight[tap * channels:(tap + taps) * channels]
        out = torch.addmm(bias, rows, part, out=out) if i == 0 else out.addmm_(rows, part)
    return out


def add_time_major_conv_grads(x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor, stride: int,
                              grad_x: torch.Tensor | None, grad_weight: torch.Tensor | None) -> None:
    """Add the gradients of time_major_conv for the output gradient `grad` (steps, out_channels)
    to grad_x and grad_weight (either may be None): again matrix products on the tap views, those
    written to grad_x `stride` taps at a time so that they never overlap."""
    channels, steps = x.shape[1], grad.shape[0]
    kernel = weight.shape[0] // channels
    if grad_weight is not None:
        for tap, taps in tap_groups(kernel, stride, channels):
            rows = slice(tap * channels, (tap + taps) * channels)
            grad_weight[rows].addmm_(tap_rows(x, tap, taps, steps, stride).T, grad)
    if grad_x is not None:
        for tap, taps in tap_groups(kernel, stride, channels, written=True):
            rows = slice(tap * channels, (tap + taps) * channels)
            tap_rows(grad_x, tap, taps, steps, stride).addmm_(grad, weight[rows].T)


class TimeMajorConv(torch.autograd.Function):
    """time_major_conv with its gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, stride: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride = stride
        return time_major_conv(x, weight, bias, stride)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        add_time_major_conv_grads(x, weight, grad, ctx.stride, grad_x, grad_weight)
        grad_bias = grad.sum(0) if ctx.needs_input_grad[2] else None
        return grad_x, grad_weight, grad_bias, None


def first_two_blocks(signal: torch.Tensor, kernels: tuple[int, int], strides: tuple[int, int], block: int):
    """(first output, output count, the slice of signal samples they read) for each block of at
    most `block` outputs of two stacked convolutions."""
    (k0, k1), (s0, s1) = kernels, strides
    frames = ((len(signal) - k0) // s0 + 1 - k1) // s1 + 1
    if frames < 1:
        raise ValueError(f"{len(signal)} samples are too few for one output frame")
    for start in range(0, frames, block):
        count = min(block, frames - start)
        first, needed = start * s1, (count - 1) * s1 + k1  # the first-layer frames this block reads
        yield start, count, slice(first * s0, (first + needed - 1) * s0 + k0)


class FirstTwoConvolutions(torch.autograd.Function):
    """convolution 0 -> finish0 (its norm and activation) -> convolution 1 of a (samples, 1)
    signal, computed block by block.

    The first layer writes 2.5 times as many numbers as the waveform has samples. Block by block,
    its output stays in cache instead of making several passes over main memory, and backward
    recomputes it block by block instead of keeping it: the first convolution is the cheapest of
    all. Blocks overlap by kernel1 - stride1 first-layer frames, whose gradients simply add up.
    finish0 must work frame by frame; its parameters come last. Returns convolution 1's output.
    """

    @staticmethod
    def forward(ctx, signal: torch.Tensor, weight0: torch.Tensor, bias0: torch.Tensor, weight1: torch.Tensor,
                bias1: torch.Tensor, strides: tuple[int, int], finish0, block: int, *finish0_parameters):
        ctx.save_for_backward(signal, weight0, bias0, weight1, *finish0_parameters)
        ctx.kernels = (weight0.shape[0], weight1.shape[0] // weight0.shape[1])
        ctx.strides, ctx.finish0, ctx.block = strides, finish0, block
        blocks = list(first_two_blocks(signal, ctx.kernels, strides, block))
        out = signal.new_empty(blocks[-1][0] + blocks[-1][1], weight1.shape[1])
        for start, count, samples in blocks:  # each block written in place: no second full-size copy
            hidden = finish0(time_major_conv(signal[samples], weight0, bias0, strides[0]))
            time_major_conv(hidden, weight1, bias1, strides[1], out=out[start:start + count])
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        signal, weight0, bias0, weight1, *parameters = ctx.saved_tensors
        strides = ctx.strides
        grad = grad.contiguous()
        grad_weight0, grad_bias0 = torch.zeros_like(weight0), torch.zeros_like(bias0)
        grad_weight1 = torch.zeros_like(weight1)
        grad_parameters = [torch.zeros_like(p) for p in parameters]
        grad_signal = torch.zeros_like(signal) if ctx.needs_input_grad[0] else None
        for start, count, samples in first_two_blocks(signal, ctx.kernels, strides, ctx.block):
            window = signal[samples]
            with torch.enable_grad():
                before = time_major_conv(window, weight0.detach(), bias0.detach(), strides[0]).requires_grad_()
                hidden = ctx.finish0(before)
            grad_hidden = torch.zeros_like(hidden)
            add_time_major_conv_grads(hidden.detach(), weight1, grad[start:start + count], strides[1],
                                      grad_hidden, grad_weight1)
            grad_before, *grads = torch.autograd.grad(hidden, (before, *parameters), grad_hidden)
            add_time_major_conv_grads(window, weight0, grad_before, strides[0],
                                      None if grad_signal is None else grad_signal[samples], grad_weight0)
            grad_bias0 += grad_before.sum(0)
            for total, part in zip(grad_parameters, grads):
                total += part
        return grad_signal, grad_weight0, grad_bias0, grad_weight1, grad.sum(0), None, None, None, *grad_parameters


def fold_group_norm(windows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                    norm: nn.GroupNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a per-channel GroupNorm over time into the convolution before it.

    windows: (frames, kernel) input windows of a one-channel convolution with tap-major weight
    (kernel, channels). Output channel c has mean w_c.m + b_c and variance w_c' S w_c, with m and
    S the windows' mean and covariance (in float64), so normalising is a per-channel affine map.
    """
    windows = windows.double()
    mean = windows.mean(0)
    centered = windows - mean
    covariance = centered.T @ centered / len(windows)
    w, b = weight.double(), bias.double()
    channel_mean = mean @ w + b
    channel_var = ((covariance @ w) * w).sum(0)
    scale = norm.weight.double() / torch.sqrt(channel_var + norm.eps)
    return (w * scale).to(weight.dtype), ((b - channel_mean) * scale + norm.bias.double()).to(weight.dtype)


def tap_major(conv: nn.Conv1d) -> tuple[torch.Tensor, torch.Tensor]:
    """A convolution's kernel as a (kernel * in_channels, out_channels) matrix, rows ordered tap
    by tap, and its bias (zeros if it has none)."""
    weight = conv.weight
    bias = conv.bias if conv.bias is not None else weight.new_zeros(weight.shape[0])
    return weight.permute(2, 1, 0).reshape(-1, weight.shape[0]), bias


def time_major_feature_encoder(layers, waveform: torch.Tensor, block_frames: int) -> torch.Tensor:
    """The feature encoder's convolutions (model.ConvLayer) for one waveform (samples,) ->
    (frames, channels), faster on a CPU than the convolutions in channel-major layout.

    Every convolution runs in time-major layout as matrix products (time_major_conv), the
    first two block by block (FirstTwoConvolutions). The first layer's GroupNorm is folded
    into its weights: its per-channel mean and variance follow exactly from the mean and
    covariance of the input windows, because the convolution is linear (gradients flow
    through the fold).
    """
    first, second, *rest = layers
    k0, s0 = first.conv.kernel_size[0], first.conv.stride[0]
    if len(waveform) < k0:
        raise ValueError(f"{len(waveform)} samples are too few for one output frame")
    weight0, bias0 = tap_major(first.conv)
    if first.norm == "group":
        weight0, bias0 = fold_group_norm(waveform.unfold(0, k0, s0), weight0, bias0, first.layer_norm)
    weight1, bias1 = tap_major(second.conv)
    x = FirstTwoConvolutions.apply(waveform[:, None], weight0, bias0, weight1, bias1,
                                   (s0, second.conv.stride[0]), first.finish, block_frames,
                                   *(first.layer_norm.parameters() if first.norm == "layer" else ()))
    x = second.finish(x)
    for layer in rest:
        x = layer.finish(TimeMajorConv.apply(x, *tap_major(layer.conv), layer.conv.stride[0]))
    return x


def keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """A dropout mask, True = keep, each element dropped with probability round(p * 2**16) / 2**16.

    nn.Dropout draws one Bernoulli sample per element: about 8 ns each on this project's 2-core
    CPU, 0.2 s of a base-model pretraining step. Here one 64-bit draw of the generator gives four
    16-bit integers, each compared with a threshold: about 1.6 ns per element.
    """
    count = math.prod(shape)
    draws = torch.randint(-2**63, 2**63 - 1, ((count + 3) // 4,), dtype=torch.int64)
    return draws.view(torch.int16)[:count].view(shape) >= round(p * 65536) - 32768


class CpuDropout(torch.autograd.Function):
    """x * mask / (1 - p), keeping the one-byte mask for backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = keep_mask(x.shape, p)
        ctx.scale = 1 / (1 - round(p * 65536) / 65536)  # the rounded p: the mean stays exact
        ctx.save_for_backward(keep)
        return x.mul(keep).mul_(ctx.scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        keep, = ctx.saved_tensors
        return grad.mul(keep).mul_(ctx.scale), None


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout, with the cheaper mask of keep_mask on a CPU (a GPU's own kernel is fast)."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, True)
    return CpuDropout.apply(x, p)


class Dropout(nn.Module):
    """nn.Dropout through `dropout`."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class GroupedConv(torch.autograd.Function):
    """F.conv1d (stride 1, zero padding) whose input gradient is itself a forward convolution.

    That gradient is the convolution of the output gradient with the kernel flipped in time and
    transposed within each group. For the positional embedding's wide grouped kernel, oneDNN's
    forward convolution computes it in half the time of its own backward pass.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, padding: int,
                groups: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.groups = padding, groups
        return F.conv1d(x, weight, bias, padding=padding, groups=groups)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        out_channels, in_per_group, kernel = weight.shape
        groups, padding = ctx.groups, ctx.padding
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            flipped = (weight.view(groups, out_channels // groups, in_per_group, kernel).transpose(1, 2)
                       .reshape(in_per_group * groups, out_channels // groups, kernel).flip(-1))
            grad_x = F.conv1d(grad, flipped, padding=kernel - 1 - padding, groups=groups)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            _, grad_weight, grad_bias = torch.ops.aten.convolution_backward(
                grad, x, weight, [out_channels], [1], [padding], [1], False, [0], groups,
                [False, ctx.needs_input_grad[1], ctx.needs_input_grad[2]])
        return grad_x, grad_weight, grad_bias, None, None


def attention_with_dropout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_mask: torch.Tensor | None,
                           p: float) -> torch.Tensor:
    """softmax(q k^T / sqrt(head_dim)) v with dropout on the attention weights, written out.

    With dropout a CPU's scaled_dot_product_attention falls back to these same steps; written
    here they use `dropout`'s cheaper mask, which is most of the cost of this function.
    """
    scores = torch.matmul(q, k.transpose(-1, -2)).mul_(q.shape[-1] ** -0.5)
    if key_mask is not None:
        scores.masked_fill_(~key_mask, float("-inf"))
    return torch.matmul(dropout(scores.softmax(-1), p, True), v)


class ScaleGradient(torch.autograd.Function):
    """Identity forward; multiplies the gradient by `scale` backward (fairseq's GradMultiply):
    the feature encoder learns ten times slower than the rest during pretraining."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None



# Reduced precision for inference on a CPU (wav2vec2.precision chooses and applies it). int8:
# each row of an activation (a frame) gets its own scale and centre, each output channel of a
# weight its own scale, and torch._int_mm multiplies the int8 matrices with int32 sums (VNNI
# instructions where the CPU has them). Per-frame scales follow each frame's own range, so that
# a loud frame does not coarsen a quiet one as one scale per tensor would; the centre spends all
# 255 steps on the range a row has (GELU outputs, the input of most products here, are nearly
# all positive: a range symmetric about 0 would waste half the steps). Quantizing and rescaling
# are several passes over the numbers, cheap only while they are in cache: so products are
# taken INT8_BLOCK_ROWS rows at a time.

INT8_BLOCK_ROWS = 256


def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x (rows, n) ~ q * scale + centre: q int8 in [-127, 127], scale and centre (rows, 1), each
    row's range [min, max] mapped onto [-127, 127]."""
    high, low = x.amax(-1, keepdim=True), x.amin(-1, keepdim=True)
    centre = (high + low).mul_(0.5)
    scale = (high - low).clamp_(min=1e-30).div_(254)
    return x.sub(centre).mul_(scale.reciprocal()).round_().to(torch.int8), scale, centre


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An (out, in) weight as int8 per output channel, symmetric: the int8 matrix transposed,
    (in, out) but stored column by column, as torch._int_mm reads it fastest; the scales (out,);
    and the sums of each output channel's int8 weights (out,), which multiply the centres."""
    weight = weight.detach().float()
    scale = weight.abs().amax(1).clamp(min=1e-30).div(127)
    q = weight.div(scale[:, None]).round().to(torch.int8)
    return q.T, scale, q.sum(1, dtype=torch.int32).float()


def add_int8_product(q: torch.Tensor, scale: torch.Tensor, centre: torch.Tensor, qweight: torch.Tensor,
                     sums: torch.Tensor, out: torch.Tensor, accumulate: bool = False) -> None:
    """out (+)= (q * scale + centre) @ qweight, for rows from quantize_rows and a weight from
    quantize_weight (`sums` its channel sums), without the weight's scales."""
    product = torch._int_mm(q, qweight)  # (mixed int and float operations are slow: converted first)
    if accumulate:
        out.add_(product.float().mul_(scale))
    else:
        out.copy_(product).mul_(scale)
    out.addr_(centre[:, 0], sums)


def int8_linear(x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, sums: torch.Tensor,
                bias: torch.Tensor | None, out: torch.Tensor | None = None) -> torch.Tensor:
    """x (rows, in) float @ a weight from quantize_weight, + bias: (rows, out) float, written
    into `out` if given."""
    if out is None:
        out = x.new_empty(x.shape[0], qweight.shape[1])
    for start in range(0, x.shape[0], INT8_BLOCK_ROWS):
        block = out[start:start + INT8_BLOCK_ROWS]
        add_int8_product(*quantize_rows(x[start:start + INT8_BLOCK_ROWS]), qweight, sums, block)
        if bias is None:
            block.mul_(scale)
        else:
            torch.addcmul(bias, block, scale, out=block)
    return out


class Int8Linear(nn.Linear):
    """nn.Linear whose forward is an int8 product. The float weight stays (saving the model
    saves it); the int8 copy is a buffer left out of the state dict."""

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        module.weight, module.bias = linear.weight, linear.bias
        for name, value in zip(("qweight", "scale", "sums"), quantize_weight(linear.weight)):
            module.register_buffer(name, value, persistent=False)
        return module

    @torch.no_grad()  # inference only
    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """(..., in) -> (..., out); `out` (rows, out) for 2-D inputs only."""
        bias = None if self.bias is None else self.bias.detach()
        y = int8_linear(x.reshape(-1, x.shape[-1]).float(), self.qweight, self.scale, self.sums, bias, out)
        return y.view(*x.shape[:-1], -1)


class Int8FeedForward(nn.Module):
    """The Transformer's feed-forward block (model.FeedForward, inference) with int8 products,
    INT8_BLOCK_ROWS frames at a time: the wide intermediate activations of a block stay in cache
    between the two products and the activation function. Same parameters and names."""

    def __init__(self, feed_forward: nn.Module):
        super().__init__()
        self.intermediate_dense = Int8Linear.from_linear(feed_forward.intermediate_dense)
        self.output_dense = Int8Linear.from_linear(feed_forward.output_dense)
        self.activation = feed_forward.activation

    @torch.no_grad()  # inference only
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        out = torch.empty(rows.shape[0], self.output_dense.out_features)
        hidden = torch.empty(min(INT8_BLOCK_ROWS, rows.shape[0]), self.intermediate_dense.out_features)
        for start in range(0, rows.shape[0], INT8_BLOCK_ROWS):
            block = rows[start:start + INT8_BLOCK_ROWS]
            inner = self.intermediate_dense(block, out=hidden[:len(block)])
            self.output_dense(self.activation(inner), out=out[start:start + len(block)])
        return out.view(*x.shape[:-1], -1)


# Attention for inference, a block of query rows at a time: each block's scores (heads x rows x
# frames) stay in cache between the two products and the softmax, where PyTorch's CPU attention
# spends most of its time on memory and the softmax. In bf16 on an AMD EPYC with AVX-512 BF16 (one
# thread, 12 heads, 1500 frames) it took 33 ms against 74 ms for scaled_dot_product_attention in
# float32 or bf16; in float32 it is slower than that (96 ms), so float32 models keep PyTorch's.

ATTENTION_BLOCK_ROWS = 128


def blocked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      key_mask: torch.Tensor | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(head_dim)) v for (batch, heads, frames, head_dim) inputs, computed in
    their dtype ATTENTION_BLOCK_ROWS query frames at a time; key_mask (batch, 1, 1, frames), True
    = attend, or None."""
    batch, heads, frames, dim = q.shape
    out = q.new_empty(batch, heads, frames, dim)
    for b in range(batch):  # each (heads, frames, head_dim) contiguous: the products read them in place
        queries, keys, values = (q[b] * dim ** -0.5).contiguous(), k[b].contiguous().transpose(1, 2), v[b].contiguous()
        for start in range(0, frames, ATTENTION_BLOCK_ROWS):
            scores = torch.bmm(queries[:, start:start + ATTENTION_BLOCK_ROWS], keys)
            if key_mask is not None:
                scores.masked_fill_(~key_mask[b], float("-inf"))
            out[b, :, start:start + ATTENTION_BLOCK_ROWS] = torch.bmm(scores.softmax(-1), values)
    return out


class BlockedAttention(nn.Module):
    """model.Attention for inference with blocked_attention in `dtype` between its two projections
    (which may be int8 or bf16 modules); the same parameters and names."""

    def __init__(self, attention: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.heads, self.dtype = attention.heads, dtype
        self.in_proj, self.out_proj = attention.in_proj, attention.out_proj

    @torch.no_grad()  # inference only
    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        batch, frames, hidden = x.shape
        qkv = self.in_proj(x).to(self.dtype).view(batch, frames, 3, self.heads, hidden // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        y = blocked_attention(q, k, v, key_mask)
        return self.out_proj(y.transpose(1, 2).reshape(batch, frames, hidden).to(x.dtype))


class Int8TimeMajorConv(nn.Module):
    """time_major_conv with int8 products: (time, channels) float -> (steps, out_channels) float,
    then `finish` (a per-frame function: the layer's norm and activation), block by block.

    The input is quantized in rows of `stride` frames (one scale and centre per row): the taps of
    each product (tap_groups) then read whole rows, or the first part of a row, so that the rows
    of each product share a scale, applied to its int32 sums before they are added up.
    """

    def __init__(self, conv: nn.Conv1d):
        super().__init__()
        self.kernel, self.stride, self.channels = conv.kernel_size[0], conv.stride[0], conv.in_channels
        weight, bias = tap_major(conv)
        qweight, scale, _ = quantize_weight(weight.T)
        self.register_buffer("bias", bias.detach().float().clone(), persistent=False)
        self.register_buffer("scale", scale, persistent=False)
        self.groups = tap_groups(self.kernel, self.stride, self.channels, written=True)
        for i, (tap, taps) in enumerate(self.groups):
            part = qweight[tap * self.channels:(tap + taps) * self.channels]
            self.register_buffer(f"qweight{i}", part.T.contiguous().T, persistent=False)
            self.register_buffer(f"sums{i}", part.sum(0, dtype=torch.int32).float(), persistent=False)

    @torch.no_grad()  # inference only
    def forward(self, x: torch.Tensor, finish=None) -> torch.Tensor:
        stride, channels = self.stride, self.channels
        steps = (x.shape[0] - self.kernel) // stride + 1
        reach = -(-self.kernel // stride)  # rows of `stride` frames that one output step reads
        out = x.new_empty(steps, self.scale.shape[0])
        for start in range(0, steps, INT8_BLOCK_ROWS):
            count = min(INT8_BLOCK_ROWS, steps - start)
            frames = x[start * stride:(start + count - 1 + reach) * stride]
            if len(frames) % stride:  # the last row is short: only its first taps are read
                frames = F.pad(frames, (0, 0, 0, stride - len(frames) % stride))
            q, row_scale, centre = quantize_rows(frames.reshape(-1, stride * channels))
            block = out[start:start + count]
            for i, (tap, taps) in enumerate(self.groups):
                rows = slice(tap // stride, tap // stride + count)
                add_int8_product(q[rows, :taps * channels], row_scale[rows], centre[rows],
                                 getattr(self, f"qweight{i}"), getattr(self, f"sums{i}"), block, accumulate=i > 0)
            torch.addcmul(self.bias, block, self.scale, out=block)
            if finish is not None:
                block.copy_(finish(block))
        return out


class TimeMajorProduct(nn.Module):
    """time_major_conv for inference with the weight kept in `dtype` (bfloat16, or float32 for a
    layer kept in float): (time, channels) -> (steps, out_channels) in `dtype`, then `finish`.
    With `onednn` (float32 only) all taps of a block form one (steps, kernel * channels) matrix
    (tap_rows) multiplied by oneDNN (see OneDnnLinear)."""

    def __init__(self, conv: nn.Conv1d, dtype: torch.dtype, onednn: bool = False):
        super().__init__()
        weight, bias = tap_major(conv)
        self.stride, self.onednn = conv.stride[0], onednn
        weight = weight.detach().to(dtype)
        self.register_buffer("weight", (weight.T if onednn else weight).contiguous(), persistent=False)
        self.register_buffer("bias", bias.detach().to(dtype).clone(), persistent=False)

    def forward(self, x: torch.Tensor, finish=None) -> torch.Tensor:
        if self.onednn and not torch.is_grad_enabled():
            kernel = self.weight.shape[1] // x.shape[1]
            steps = (x.shape[0] - kernel) // self.stride + 1
            y = onednn_linear(tap_rows(x, 0, kernel, steps, self.stride), self.weight, self.bias)
        else:
            weight = self.weight.T if self.onednn else self.weight
            y = time_major_conv(x.to(weight.dtype), weight, self.bias, self.stride)
        return y if finish is None else finish(y)


# Float32 products through oneDNN. PyTorch's float32 matrix products go to MKL, which on AMD CPUs
# runs a generic path: on an AMD EPYC (family 26, AVX-512) one thread multiplied 1500 x 768 x 3072
# at 102-117 GFLOP/s through MKL and 233-264 GFLOP/s through oneDNN, the library PyTorch uses for
# bf16 (`python benchmarks/machine.py` measures both). wav2vec2.precision decides where to use it.

def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, weight, bias) for float32 inference, computed by oneDNN (no gradient)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class OneDnnLinear(nn.Linear):
    """nn.Linear whose inference forward (no gradient wanted, not exporting) is onednn_linear;
    the same parameters and state dict."""

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> OneDnnLinear:
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, device="meta")
        module.weight, module.bias = linear.weight, linear.bias
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or plain_ops() or x.dtype != torch.float32:
            return F.linear(x, self.weight, self.bias)
        return onednn_linear(x, self.weight, self.bias)
