"""Selective scans with a scalar decay per head, and their backends.

The recurrence (Mamba-2's parameterisation of Mamba's selective scan), for a
sequence of length ``L``, ``h`` heads of ``p`` channels and ``n`` states::

    S_t = exp(dt_t * A) * S_{t-1} + dt_t * B_t x_t^T      S_t: (n, p) per head
    y_t = C_t^T S_t + D * x_t

with ``dt_t > 0`` (already through softplus), ``A < 0`` one number per head,
``B_t, C_t`` of size ``n`` (input-dependent: "selective") shared by the heads of
a group (Mamba-2's ``ngroups``; the SS2D block uses one group per scan order).
Shapes used throughout: ``x (b, L, h, p)``, ``dt (b, L, h)``, ``A (h,)``,
``B, C (b, L, g, n)`` with ``g`` dividing ``h`` (heads ``i*h/g ... (i+1)*h/g - 1``
form group ``i``), ``D (h,)``; the result has the shape of ``x``.

Backends
--------
``chunked`` (CPU and GPU, pure PyTorch)
    Mamba-2's state-space duality: the sequence is cut into chunks of ``Q``
    steps; inside a chunk the scan is a masked ``(Q x Q)`` matrix product (the
    "attention-like" form), and chunks pass a ``(n x p)`` state to each other
    through a second small matrix product. Everything is a batched matmul, so it
    runs on BLAS instead of materialising ``L x D x n`` tensors as an unfused
    Mamba-1 scan does. Cost: ``L*Q*h*p + 3*L*n*h*p`` multiply-adds and
    ``L*Q*h`` exponentials.
``numba`` (CPU inference)
    A fused kernel compiled with numba: the recurrence step by step, with the
    state in registers/L1, vectorised over a head's channels and parallel over
    (batch, head, channel block). No ``L x n x p`` tensor is ever materialised,
    so it runs at the arithmetic floor (``3*L*n*h*p`` multiply-adds, ``L*h``
    exponentials). It has no backward pass: used when no gradient is needed.
``mamba_ssm`` (CUDA only, optional extra ``cuda``)
    The fused ``selective_scan_fn`` kernel of the ``mamba-ssm`` package, given the
    same recurrence in Mamba-1 layout (``A`` and ``dt`` broadcast over each head's
    channels and the states). Used when the package imports and the tensors are on
    a GPU.
``export`` (ONNX / TorchScript / ExportedProgram; any runtime)
    The same state-space duality as ``chunked``, written for deployable export
    (:func:`scan_export`): static shapes only, every tensor of rank <= 4 (heads
    folded into the batch axis), cumulative sums as products with a constant
    triangular matrix (no ``CumSum``), causal masks as an added constant 0 /
    -1e30 matrix before ``exp`` (no ``-inf``, bool tensors or ``Where``), and the
    chunks' carry itself a chunked scan (linear in the chunk count). The graph
    holds only ops that ONNX Runtime and QNN-style NPU runtimes run. Selected
    automatically while a model is being exported.
``sequential`` (reference)
    The recurrence written out step by step in PyTorch; slow, for tests only.

:func:`selective_scan` picks the backend. ``auto``: ``mamba_ssm`` on CUDA when it
imports; on CPU, ``numba`` when no gradient is needed, else ``chunked``; ``export``
while ``torch.onnx.export`` or ``torch.export`` runs. Under ``torch.jit.trace`` (fvcore's MAC counter)
the scan is recorded as one op, ``prim::PythonOp.SelectiveScan``, so it can be
counted by the recurrence's own formula (see :func:`scan_macs`) whatever the backend.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

BACKENDS = ("auto", "chunked", "numba", "mamba_ssm", "sequential", "export")
DEFAULT_CHUNK = 64


@functools.lru_cache(maxsize=1)
def mamba_ssm_scan():
    """mamba-ssm's fused ``selective_scan_fn``, or None when it cannot be imported."""
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as err:  # ImportError, or a CUDA/triton error on a CPU-only machine
        _MAMBA_ERROR[:] = [f"{type(err).__name__}: {err}"]
        return None
    return selective_scan_fn


_MAMBA_ERROR: list[str] = []


def choose_backend(on_cuda: bool, grad: bool) -> tuple[str, str]:
    """What ``auto`` runs outside an export, and why: ``(backend, reason)``."""
    if on_cuda:
        if mamba_ssm_scan() is not None:
            return "mamba_ssm", "CUDA tensors and mamba-ssm imports: its fused selective_scan_fn"
        why = _MAMBA_ERROR[0] if _MAMBA_ERROR else "it does not import"
        return "chunked", (f"CUDA tensors but mamba-ssm is not usable ({why}): the chunked "
                           "PyTorch scan; pip install 'nasframe[cuda]' for the fused kernel")
    if not grad and numba_available():
        return "numba", "CPU inference: the numba kernel"
    if grad:
        return "chunked", "CPU training: the chunked scan (numba has no backward)"
    return "chunked", "CPU inference without numba: the chunked scan; pip install numba"


@functools.lru_cache(maxsize=1)
def _numba_kernel():
    """The compiled numba kernel (compiled on first use, cached on disk), or None."""
    try:
        import numba
        import numpy as np
    except ImportError:
        return None

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def kernel(x, dt, A, B, C, D, y, block):  # pragma: no cover - compiled
        b, L, h, p = x.shape
        g, n = B.shape[2], B.shape[3]
        hg = h // g
        nblocks = (p + block - 1) // block
        for job in numba.prange(b * h * nblocks):
            bi = job // (h * nblocks)
            hi = (job // nblocks) % h
            j0 = (job % nblocks) * block
            j1 = min(j0 + block, p)
            gi = hi // hg
            a, d = A[hi], D[hi]
            state = np.zeros((n, j1 - j0), dtype=x.dtype)
            acc = np.empty(j1 - j0, dtype=x.dtype)
            for t in range(L):
                step = dt[bi, t, hi]
                decay = np.exp(step * a)
                xr = x[bi, t, hi, j0:j1]
                for j in range(j1 - j0):
                    acc[j] = d * xr[j]
                for k in range(n):
                    bk = step * B[bi, t, gi, k]
                    ck = C[bi, t, gi, k]
                    for j in range(j1 - j0):
                        s = decay * state[k, j] + bk * xr[j]
                        state[k, j] = s
                        acc[j] += ck * s
                y[bi, t, hi, j0:j1] = acc

    return kernel


@functools.lru_cache(maxsize=1)
def _numba_cross_kernel():
    """The fused SS2D kernel: reads the map in each scan order in place, softplus of
    dt, scan, and writes each order's output at row-major positions (summed over
    orders, or each order in its own channels). None without numba."""
    try:
        import numba
        import numpy as np
    except ImportError:
        return None

    @numba.njit(parallel=True, fastmath=True, cache=True)
    def kernel(xs, par, step_, decay_, D, y, heads, d_state, orders, split, first, block):  # pragma: no cover
        b, hh, ww, inner = xs.shape
        width = inner // orders if split else inner      # channels each order scans
        headdim = width // heads
        n = d_state
        k = heads + 2 * n
        nblocks = (headdim + block - 1) // block
        groups = orders if split else 1                  # orders run in parallel when split
        serial = 1 if split else orders                  # else one job runs every order
        for job in numba.prange(b * groups * heads * nblocks):
            bi = job // (groups * heads * nblocks)
            gi = (job // (heads * nblocks)) % groups
            hi = (job // nblocks) % heads
            c0 = gi * width + hi * headdim
            j0 = c0 + (job % nblocks) * block
            j1 = min(j0 + block, c0 + headdim)
            state = np.empty((n, j1 - j0), dtype=xs.dtype)
            acc = np.empty(j1 - j0, dtype=xs.dtype)
            for so in range(serial):
                oi = gi if split else so
                head = oi * heads + hi
                d = D[head]
                base = oi * k + heads
                state[:] = 0.0
                # direction 0 rows, 1 columns, 2 and 3 the same backwards: (outer, inner) loops
                di = (first + oi) % 4
                n_out = hh if di % 2 == 0 else ww
                n_in = ww if di % 2 == 0 else hh
                for i0 in range(n_out):
                    i = n_out - 1 - i0 if di >= 2 else i0
                    for q0 in range(n_in):
                        q = n_in - 1 - q0 if di >= 2 else q0
                        r = i if di % 2 == 0 else q
                        c = q if di % 2 == 0 else i
                        step = step_[bi, r, c, head]
                        decay = decay_[bi, r, c, head]
                        xr = xs[bi, r, c, j0:j1]
                        pr = par[bi, r, c, base:base + 2 * n]
                        for j in range(j1 - j0):
                            acc[j] = d * xr[j]
                        for kk in range(n):
                            bk = step * pr[kk]
                            ck = pr[n + kk]
                            for j in range(j1 - j0):
                                s = decay * state[kk, j] + bk * xr[j]
                                state[kk, j] = s
                                acc[j] += ck * s
                        if so == 0:
                            y[bi, r, c, j0:j1] = acc
                        else:
                            for j in range(j1 - j0):
                                y[bi, r, c, j0 + j] += acc[j]

    return kernel


def cross_scan_numba(xs, params, dt_bias, A, D, heads: int, d_state: int, orders: int,
                     split: bool = False, first: int = 0):
    """SS2D's scan over ``orders`` scan orders in one fused numba kernel (CPU, no gradient).

    ``xs (b, H, W, c)`` channels-last; ``params (b, H, W, orders*(h + 2n))`` the raw
    per-order ``dt`` (before softplus and bias, one per head), ``B`` and ``C``;
    ``dt_bias``, ``A``, ``D`` ``(orders*h,)``; ``heads`` is ``h``, the heads of one
    order. ``split=False``: every order scans all ``c`` channels and the outputs,
    re-aligned to row-major positions, are summed (MambaIR). ``split=True``: order
    ``i`` scans channels ``i*c/orders ... (i+1)*c/orders - 1`` only. Order ``i``
    reads the map in direction ``(first + i) % 4`` (0 row-major, 1 column-major,
    2 and 3 the same reversed). Returns ``(b, H, W, c)``.
    """
    kernel = _numba_cross_kernel()
    if kernel is None:
        raise RuntimeError("the `numba` scan backend needs numba: pip install numba")
    import numba

    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    b, hh, ww, inner = xs.shape
    headdim = (inner // orders if split else inner) // heads
    splits = -(-threads // (b * heads * (orders if split else 1)))
    block = -(-headdim // splits)
    dtype = torch.promote_types(xs.dtype, torch.float32)
    # softplus(dt) and the decays, vectorised here: (b, H, W, orders*heads), small
    raw = params.unflatten(-1, (orders, heads + 2 * d_state))[..., :heads].flatten(-2)
    step = F.softplus(raw + dt_bias)
    decay = torch.exp(step * A)
    arrays = [t.detach().to(dtype).contiguous().numpy() for t in (xs, params, step, decay, D)]
    y = torch.empty(b, hh, ww, inner, dtype=dtype)
    kernel(*arrays, y.numpy(), heads, d_state, orders, split, first, block)
    return y.to(xs.dtype)


def numba_available() -> bool:
    return _numba_kernel() is not None


def scan_numba(x, dt, A, B, C, D):
    """The recurrence through the fused numba kernel (CPU, no gradient)."""
    kernel = _numba_kernel()
    if kernel is None:
        raise RuntimeError("the `numba` scan backend needs numba: pip install numba; "
                           "or use backend `chunked`")
    if x.is_cuda or torch.is_grad_enabled() and any(
            t.requires_grad for t in (x, dt, A, B, C, D)):
        raise RuntimeError("the `numba` scan backend runs on CPU without gradients; "
                           "use backend `chunked` (or `auto`) for training")
    import numba

    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    b, _, h, p = x.shape
    # whole heads per job (the state stays in cache) unless that leaves threads idle
    splits = -(-threads // (b * h))
    block = -(-p // splits)
    dtype = torch.promote_types(x.dtype, torch.float32)
    arrays = [t.detach().to(dtype).contiguous().numpy() for t in (x, dt, A, B, C, D)]
    y = torch.empty(x.shape, dtype=dtype)
    kernel(*arrays, y.numpy(), block)
    return y.to(x.dtype)


def scan_sequential(x, dt, A, B, C, D):
    """The recurrence step by step (the reference; slow)."""
    b, L, h, p = x.shape
    g, n = B.shape[-2:]
    Bh = B.repeat_interleave(h // g, dim=2)                              # (b, L, h, n)
    Ch = C.repeat_interleave(h // g, dim=2)
    state = x.new_zeros(b, h, n, p)
    ys = []
    for t in range(L):
        decay = torch.exp(dt[:, t] * A)                                  # (b, h)
        inject = (dt[:, t, :, None, None] * Bh[:, t, :, :, None]) * x[:, t, :, None, :]
        state = decay[:, :, None, None] * state + inject                 # (b, h, n, p)
        ys.append(torch.einsum("bhn,bhnp->bhp", Ch[:, t], state) + D[:, None] * x[:, t])
    return torch.stack(ys, dim=1)


def scan_chunked(x, dt, A, B, C, D, chunk: int = DEFAULT_CHUNK):
    """The recurrence as chunked matrix products (state-space duality)."""
    b, L, h, p = x.shape
    g, n = B.shape[-2:]
    Q = min(chunk, L)
    pad = (-L) % Q
    if pad:  # zero-padded steps inject nothing and come after the real ones
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
    c = x.shape[1] // Q
    hg = h // g
    # heads as (g, h/g): group i's B and C broadcast over its heads
    xdt = (x * dt[..., None]).reshape(b, c, Q, g, hg, p).permute(0, 3, 4, 1, 2, 5)  # (b,g,hg,c,Q,p)
    a = (dt * A).reshape(b, c, Q, g, hg).permute(0, 3, 4, 1, 2)                      # (b,g,hg,c,Q)
    acum = torch.cumsum(a, dim=-1)
    Bc = B.reshape(b, c, Q, g, n).permute(0, 3, 1, 2, 4).unsqueeze(2)               # (b,g,1,c,Q,n)
    Cc = C.reshape(b, c, Q, g, n).permute(0, 3, 1, 2, 4).unsqueeze(2)
    # inside each chunk: y_i = sum_{j<=i} (C_i . B_j) exp(acum_i - acum_j) xdt_j
    seg = acum[..., :, None] - acum[..., None, :]                                 # (b,g,hg,c,Q,Q)
    causal = torch.ones(Q, Q, dtype=torch.bool, device=x.device).tril()
    decay = torch.exp(seg.masked_fill(~causal, float("-inf")))
    y = (torch.matmul(Cc, Bc.transpose(-1, -2)) * decay) @ xdt                    # (b,g,hg,c,Q,p)
    if c > 1:
        # state at the end of each chunk, from that chunk's own inputs
        to_end = torch.exp(acum[..., -1:] - acum)                                 # (b,g,hg,c,Q)
        states = (Bc.transpose(-1, -2) * to_end[..., None, :]) @ xdt              # (b,g,hg,c,n,p)
        # state entering chunk i: sum_{j<i} exp(total_{j+1..i-1}) states_j
        total = torch.cumsum(acum[..., -1], dim=-1)                               # (b,g,hg,c)
        gap = total[..., :-1, None] - total[..., None, :-1]                       # (.., c-1, c-1)
        lower = torch.ones(c - 1, c - 1, dtype=torch.bool, device=x.device).tril()
        carry = torch.exp(gap.masked_fill(~lower, float("-inf")))
        entering = (carry @ states[..., :-1, :, :].reshape(b, g, hg, c - 1, n * p))
        entering = entering.reshape(b, g, hg, c - 1, n, p)
        y_off = (Cc[..., 1:, :, :] @ entering) * torch.exp(acum[..., 1:, :])[..., None]
        y = torch.cat([y[..., :1, :, :], y[..., 1:, :, :] + y_off], dim=-3)
    y = y.permute(0, 3, 4, 1, 2, 5).reshape(b, c * Q, h, p)[:, :L]
    return y + D[:, None] * x[:, :L]


def scan_mamba_ssm(x, dt, A, B, C, D):
    """The recurrence through mamba-ssm's fused CUDA kernel (Mamba-1 layout)."""
    fn = mamba_ssm_scan()
    if fn is None:
        raise RuntimeError("the `mamba_ssm` scan backend needs the mamba-ssm package on a CUDA "
                           "machine: pip install 'nasframe[cuda]'; or use backend `chunked`")
    b, L, h, p = x.shape
    d = h * p
    u = x.reshape(b, L, d).transpose(1, 2).contiguous()                           # (b, d, L)
    delta = dt.repeat_interleave(p, dim=-1).transpose(1, 2).contiguous()          # (b, d, L)
    A_full = A.repeat_interleave(p)[:, None].expand(d, B.shape[-1]).contiguous()  # (d, n)
    # grouped B and C: (b, g, n, L)
    y = fn(u, delta, A_full, B.permute(0, 2, 3, 1).contiguous(), C.permute(0, 2, 3, 1).contiguous(),
           D.repeat_interleave(p).contiguous())
    return y.transpose(1, 2).reshape(b, L, h, p)


def exporting() -> bool:
    """True while ``torch.onnx.export`` (either exporter) or ``torch.export`` traces a model."""
    return bool(torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting())


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"scan backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "auto":
        if exporting():
            return "export"
        return choose_backend(x.is_cuda, torch.is_grad_enabled())[0]
    return backend


def _run(backend: str, chunk: int, x, dt, A, B, C, D):
    if backend == "chunked":
        return scan_chunked(x, dt, A, B, C, D, chunk)
    if backend == "numba":
        return scan_numba(x, dt, A, B, C, D)
    if backend == "mamba_ssm":
        return scan_mamba_ssm(x, dt, A, B, C, D)
    if backend == "export":
        return scan_export(x, dt, A, B, C, D, chunk)
    return scan_sequential(x, dt, A, B, C, D)


class SelectiveScan(torch.autograd.Function):
    """The scan as one traced op (``prim::PythonOp.SelectiveScan``) for MAC counters.

    Only used under ``torch.jit.trace``; its backward recomputes the forward.
    """

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, backend: str, chunk: int):
        ctx.save_for_backward(x, dt, A, B, C, D)
        ctx.backend, ctx.chunk = backend, chunk
        return _run(backend, chunk, x, dt, A, B, C, D)

    @staticmethod
    def backward(ctx, grad):
        inputs = [t.detach().requires_grad_(True) for t in ctx.saved_tensors]
        with torch.enable_grad():
            out = _run(ctx.backend, ctx.chunk, *inputs)
        grads = torch.autograd.grad(out, inputs, grad, allow_unused=True)
        return (*grads, None, None)


def selective_scan(x, dt, A, B, C, D, backend: str = "auto", chunk: int = DEFAULT_CHUNK):
    """``y`` of the recurrence above (see the module docstring for shapes)."""
    backend = resolve_backend(backend, x)
    if backend == "export":   # plain tensor ops: traced and exported as they are
        return scan_export(x, dt, A, B, C, D, chunk)
    if torch.jit.is_tracing():
        # numba takes no traced tensors; the chunked scan computes the same function
        return SelectiveScan.apply(x, dt, A, B, C, D,
                                   "chunked" if backend == "numba" else backend, chunk)
    return _run(backend, chunk, x, dt, A, B, C, D)


def scan_macs(b: int, L: int, d: int, n: int) -> int:
    """Multiply-adds of the recurrence itself, independent of the backend.

    Per step and channel: the state update (``n`` multiply-adds for the decay,
    ``n`` for the input injection) and the read-out (``n``), plus the skip ``D``:
    ``b * L * d * (3n + 1)``. The chunked backend does more work than this
    (the intra-chunk matrix, ``Q*d`` per step): the count describes the layer,
    as a fused kernel would run it.
    """
    return b * L * d * (3 * n + 1)


# -- the export form -----------------------------------------------------------------------
# Constants are built in NumPy so that every exporter stores them as initializers
# (``torch.ones(..).tril()`` would become ``ConstantOfShape`` + ``Trilu``).
#
# Layout: sequence-major, as the block holds its map (``x (b, L, h, p)``: a head's channels
# contiguous at each step), so that neither heads nor scan directions move data: a reversed
# direction is the anti-causal form of the same products (the transposed constants), and
# heads with different decays share one matrix product through a block-diagonal weight
# (``(Q*h) x (Q*h)`` per chunk, laid out as the map is).
#
# Float16: every log-decay is a sum of same-sign terms over exactly its own segment (a
# product with a constant 0/1 matrix of the masked log-decays), never the difference of two
# cumulative sums, whose cancellation loses all precision in half floats once the sums grow
# (a chunk of 64 steps, or the carry over 64 chunks); every ``exp`` has an argument <= 0 and
# masks are 0/1 factors after it (no -inf, no huge constants). Arguments are clamped at
# :data:`EXP_FLOOR` first: the Hexagon NPU's float16 ``Exp`` returns garbage (-131008) for
# arguments between about -184 and -88 (measured on QNN's HTP emulator).

#: lower bound of every ``exp`` argument in the export form: exp(-80) = 1.8e-35, zero at
#: float32 resolution next to any term that matters, and still a normal float32
EXP_FLOOR = -80.0

#: chunks per carry group: the chunks pass their states to each other by one (R x R) product
#: per group of this many; the groups' own states by the same product (recursively)
CARRY_GROUP = 16
#: chunk length targeted by :func:`export_chunk` (steps per chunk)
EXPORT_CHUNK = 32


def _tri_np(size: int, kind: str) -> np.ndarray:
    """0/1 ``(size, size)``: ``le`` [j <= i], ``lt`` [j < i], ``ge`` [j >= i], ``gt`` [j > i]
    (row i, column j). Not cached: Dynamo (torch.export) warns at every cached call it
    traces, and the matrices are small."""
    i, j = np.indices((size, size))
    return {"le": j <= i, "lt": j < i, "ge": j >= i, "gt": j > i}[kind].astype(np.float32)


def _eye_np(size: int) -> np.ndarray:
    return np.eye(size, dtype=np.float32)


def _const(array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(array).to(device=like.device, dtype=like.dtype)


def _pad_end(t: torch.Tensor, dim: int, extra: int) -> torch.Tensor:
    """``extra`` zeros appended along ``dim`` (a ``Concat`` with a constant)."""
    if not extra:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t, _const(np.zeros(shape, dtype=np.float32), t)], dim=dim)


def exp_export(v: torch.Tensor) -> torch.Tensor:
    """``exp(v)`` with ``v`` clamped at :data:`EXP_FLOOR` (a ``Clip`` before the ``Exp``)."""
    return torch.exp(torch.clamp(v, min=EXP_FLOOR))


def softplus_export(v: torch.Tensor) -> torch.Tensor:
    """``log(1 + exp(v))``, stable, from Relu/Abs/Neg/Clip/Exp/Log (``F.softplus`` exports
    with a threshold as ``Softplus`` + ``Greater`` + ``Where``, which mobile runtimes reject)."""
    return torch.relu(v) + torch.log(1 + exp_export(-torch.abs(v)))


def export_chunk(length: int, chunk: int | None = None) -> int:
    """The chunk length of the export scan for a sequence of ``length`` steps: ``chunk``
    when given, else :data:`EXPORT_CHUNK`; never longer than the sequence, and a divisor of
    ``length`` when one lies within a factor 2 below (no padding)."""
    q = max(1, min(chunk if chunk is not None else EXPORT_CHUNK, length))
    for cand in range(q, max(q // 2, 1) - 1, -1):
        if length % cand == 0:
            return cand
    return q


def _segment_exp(a: torch.Tensor, reverse: bool) -> torch.Tensor:
    """Decays between the steps of each chunk: ``a (r, Q)`` log-decays (<= 0); returns
    ``(r, Q, Q)``: ``exp(a_{j+1} + .. + a_i)`` at ``[i, j]`` for ``j <= i`` (reverse:
    ``exp(a_i + .. + a_{j-1})`` for ``j >= i``); 1 elsewhere (the caller's factors are masked).
    Each sum is the product of a constant 0/1 matrix with the masked terms (one sign: no
    cancellation)."""
    Q = a.shape[-1]
    inner = _const(_tri_np(Q, "gt" if reverse else "lt"), a)          # [k, j]: k after j
    outer = _const(_tri_np(Q, "ge" if reverse else "le"), a)          # [i, k]: k up to i
    # outer @ diag(a) @ inner, the diagonal applied to outer's columns: a broadcast along
    # the last axis (ONNX Runtime broadcasts a size-1 last axis element by element, 2-3x slower)
    return exp_export((outer * a[..., None, :]) @ inner)


def _carry(states: torch.Tensor, s: torch.Tensor, reverse: bool, group: int) -> torch.Tensor:
    """The state entering each chunk: ``states (r, c, N)`` each chunk's own contribution
    to the state at its end (at its start, reversed), ``s (r, c)`` each chunk's total
    log-decay; returns ``E (r, c, N)``, ``E_i = sum_{j<i} exp(s_{j+1} + .. + s_{i-1})
    states_j`` (reversed: ``j > i``). A scan with a scalar decay itself: one masked
    ``(c x c)`` product up to ``group`` chunks, else per group, a scan over the groups' own
    states (recursively) and each group's entering state decayed into its chunks."""
    r, c, N = states.shape
    if c <= group:
        # exp(s_{j+1} + .. + s_{i-1}) for j < i: the segment sum of the strict interior
        inner = _const(_tri_np(c, "gt" if reverse else "lt"), s)      # [m, j]: m after j
        outer = _const(_tri_np(c, "gt" if reverse else "lt"), s)      # [i, m]: m before i
        weights = exp_export((outer * s[..., None, :]) @ inner) * outer
        return weights @ states
    R = group
    extra = (-c) % R
    if extra:   # empty chunks at the end: no state, no decay; they change nothing before them
        states, s = _pad_end(states, 1, extra), _pad_end(s, 1, extra)
    G = (c + extra) // R
    sg = s.reshape(r * G, R)
    local = _carry(states.reshape(r * G, R, N), sg, reverse, group)
    # each group's own state at its end (start, reversed), and its total decay
    to_end = exp_export(sg @ _const(_tri_np(R, "gt" if reverse else "lt"), s))   # (rG, R)
    ends = to_end[:, None, :] @ states.reshape(r * G, R, N)                       # (rG, 1, N)
    into = _carry(ends.reshape(r, G, N), sg.sum(-1).reshape(r, G), reverse, group)
    from_start = exp_export(sg @ _const(_tri_np(R, "lt" if reverse else "gt"), s))  # (rG, R)
    out = local + from_start[..., None] * into.reshape(r * G, 1, N)
    return out.reshape(r, G * R, N)[:, :c]


def scan_heads_sequence_export(xs, dts, A, B, C, D, chunk: int | None = None,
                               reverse: bool = False, group: int = CARRY_GROUP):
    """The recurrence over a sequence in its own layout, rank <= 4 throughout (the export
    form), for the heads of one group: ``xs`` a list of ``(b, L, p)`` (one per head),
    ``dts`` of ``(b, L)`` after softplus, ``A``, ``D (h,)``; ``B, C (b, L, n)`` shared by the
    heads; ``reverse``: the sequence read from its end (``S_t`` from ``S_{t+1}``). Returns a
    list of ``(b, L, p)``.

    Per chunk of ``Q`` steps (:func:`export_chunk`): ``y = (CB * decay * dt + D I) x``, one
    product, plus ``C``, decayed from the chunk's start, times the state entering the chunk;
    states pass between chunks by :func:`_carry`. Heads are separate tensors: the caller
    produces each head's channels by its own slice of the projection weights, so neither
    heads nor directions move data.
    """
    b, L, p = xs[0].shape
    n = B.shape[-1]
    Q = export_chunk(L, chunk)
    pad = (-L) % Q
    if pad:   # zero steps at the end: no input, no decay; sliced off below
        xs, dts = [_pad_end(x, 1, pad) for x in xs], [_pad_end(d, 1, pad) for d in dts]
        B, C = _pad_end(B, 1, pad), _pad_end(C, 1, pad)
    c = (L + pad) // Q
    r = b * c
    Bc, Cc = B.reshape(r, Q, n), C.reshape(r, Q, n)
    mask = _const(_tri_np(Q, "ge" if reverse else "le"), Bc)
    eye = _const(_eye_np(Q), Bc)
    outs = []
    for i, (x, dt) in enumerate(zip(xs, dts)):
        xc, dtc = x.reshape(r, Q, p), dt.reshape(r, Q)
        a = dtc * A[i]                                                    # (r, Q) <= 0
        bdt = Bc * dtc[..., None]                                         # dt_k B_k
        cb = (Cc @ bdt.transpose(-1, -2)) * mask                          # (r, Q, Q), masked
        y = (_segment_exp(a, reverse) * cb + eye * D[i]) @ xc             # (r, Q, p)
        if c > 1:
            # the chunk's state at its end (start, reversed): sum_k exp(a after k) dt_k B_k x_k
            to_end = a @ _const(_tri_np(Q, "gt" if reverse else "lt"), a)   # sum over k'>k
            states = (bdt * exp_export(to_end)[..., None]).transpose(-1, -2) @ xc   # (r, n, p)
            entering = _carry(states.reshape(b, c, n * p), a.sum(-1).reshape(b, c), reverse,
                              group)                                        # (b, c, n*p)
            from_start = exp_export(a @ _const(_tri_np(Q, "le" if reverse else "ge"), a))
            y = y + (Cc * from_start[..., None]) @ entering.reshape(r, n, p)
        y = y.reshape(b, c * Q, p)
        outs.append(y[:, :L] if pad else y)
    return outs


def scan_export(x, dt, A, B, C, D, chunk: int | None = None):
    """The export form in this module's layout (``x (b, L, h, p)``, ``B, C (b, L, g, n)``):
    :func:`scan_heads_sequence_export` per group, the heads sliced apart."""
    h, g = x.shape[2], B.shape[2]
    hg = h // g
    ys = []
    for i in range(g):
        heads = range(i * hg, (i + 1) * hg)
        ys += scan_heads_sequence_export([x[:, :, j] for j in heads], [dt[:, :, j] for j in heads],
                                         A[i * hg:(i + 1) * hg], B[:, :, i], C[:, :, i],
                                         D[i * hg:(i + 1) * hg], chunk)
    return torch.stack(ys, dim=2)
