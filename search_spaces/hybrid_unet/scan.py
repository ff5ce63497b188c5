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
    except Exception:  # ImportError, or a CUDA/triton error on a CPU-only machine
        return None
    return selective_scan_fn


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
        if x.is_cuda:
            return "mamba_ssm" if mamba_ssm_scan() is not None else "chunked"
        if not torch.is_grad_enabled() and numba_available():
            return "numba"
        return "chunked"
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

#: added to log-decays above the causal diagonal: ``exp`` of it is 0 (finite, unlike -inf)
MASKED = -1e30
#: chunks pass their states to each other by one (c x c) product up to this many chunks;
#: beyond, in groups of this many (recursively), so the cost stays linear in the chunks
CARRY_GROUP = 32


@functools.lru_cache(maxsize=64)
def _tri_np(size: int, strict: bool, upper: bool) -> np.ndarray:
    ones = np.ones((size, size), dtype=np.float32)
    return np.triu(ones, 1 if strict else 0) if upper else np.tril(ones, -1 if strict else 0)


@functools.lru_cache(maxsize=64)
def _mask_np(size: int, strict: bool) -> np.ndarray:
    return np.where(_tri_np(size, strict, False) > 0, 0.0, MASKED).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _shift_np(size: int) -> np.ndarray:
    return np.eye(size, k=1, dtype=np.float32)


def _const(array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(array).to(device=like.device, dtype=like.dtype)


def _cumsum_last(a: torch.Tensor) -> torch.Tensor:
    """Inclusive cumulative sum over the last axis: a product with a constant
    upper-triangular 0/1 matrix (no ``CumSum`` op)."""
    return a @ _const(_tri_np(a.shape[-1], False, True), a)


def _shift(a: torch.Tensor) -> torch.Tensor:
    """``out_i = a_{i-1}``, ``out_0 = 0`` over the last axis (a product with a constant 0/1
    matrix: exact). Exclusive prefix sums from inclusive ones without a subtraction,
    which is not exact in float32 and shows at long sequences."""
    return a @ _const(_shift_np(a.shape[-1]), a)


def _pad_end(t: torch.Tensor, dim: int, extra: int) -> torch.Tensor:
    """``extra`` zeros appended along ``dim`` (a ``Concat`` with a constant)."""
    if not extra:
        return t
    shape = list(t.shape)
    shape[dim] = extra
    return torch.cat([t, _const(np.zeros(shape, dtype=np.float32), t)], dim=dim)


def softplus_export(v: torch.Tensor) -> torch.Tensor:
    """``log(1 + exp(v))``, stable, from Relu/Abs/Neg/Exp/Log (``F.softplus`` exports with
    a threshold as ``Softplus`` + ``Greater`` + ``Where``, which mobile runtimes reject)."""
    return torch.relu(v) + torch.log(1 + torch.exp(-torch.abs(v)))


def _causal_exp(logs: torch.Tensor, strict: bool = False) -> torch.Tensor:
    """``exp(logs)`` on and below the diagonal (strictly below with ``strict``), 0 above."""
    return torch.exp(logs + _const(_mask_np(logs.shape[-1], strict), logs))


def _entering(states: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The state entering each chunk: ``E_i = sum_{j<i} exp(s_{j+1} + .. + s_{i-1}) states_j``.

    ``states (r, c, N)``: each chunk's own contribution to the state at its end;
    ``s (r, c)``: each chunk's total log-decay. A scan with a scalar decay itself: one
    masked ``(c x c)`` product up to :data:`CARRY_GROUP` chunks, else local products in
    groups, a scan over the groups' end states (recursively), and each group's entering
    state decayed into its chunks.
    """
    r, c, N = states.shape
    if c <= CARRY_GROUP:
        T = _cumsum_last(s)
        carry = _causal_exp(_shift(T)[..., :, None] - T[..., None, :], strict=True)   # (r, c, c)
        return carry @ states
    R = CARRY_GROUP
    extra = (-c) % R
    if extra:   # empty chunks at the end change nothing before them
        states, s = _pad_end(states, 1, extra), _pad_end(s, 1, extra)
    G = (c + extra) // R
    sg = s.reshape(r, G, R)
    Tg = _cumsum_last(sg)
    local = _entering(states.reshape(r * G, R, N), sg.reshape(r * G, R)).reshape(r, G, R, N)
    ends = torch.exp(Tg[..., -1:] - Tg)[..., None, :] @ states.reshape(r, G, R, N)   # (r, G, 1, N)
    into = _entering(ends.reshape(r, G, N), Tg[..., -1:].squeeze(-1))                           # (r, G, N)
    out = local + torch.exp(_shift(Tg))[..., None] * into[:, :, None, :]
    return out.reshape(r, G * R, N)[:, :c]


def scan_heads_export(x, dt, A, B, C, D, chunk: int = DEFAULT_CHUNK):
    """The recurrence in head-major layout, rank <= 4 throughout (the export form).

    ``x (b, h, L, p)``, ``dt (b, h, L)`` (after softplus), ``A (h,)``, ``B, C (b, g, L, n)``
    shared by the ``h/g`` consecutive heads of each group, ``D (h,)``; returns
    ``(b, h, L, p)``. Per-step scalings act on the ``n``-sized ``B``/``C``: ``dt`` and the
    decay to a chunk's end are folded into ``B``, the decay from its start into ``C``.
    """
    b, h, L, p = x.shape
    g, n = B.shape[1], B.shape[3]
    hg, bh = h // g, b * h
    Q = min(chunk, L)
    pad = (-L) % Q
    c = (L + pad) // Q
    skip = D[:, None, None] * x
    if pad:   # zero steps at the end inject nothing into the real ones
        x, B, C, dt = _pad_end(x, 2, pad), _pad_end(B, 2, pad), _pad_end(C, 2, pad), _pad_end(dt, 2, pad)
    Lp = c * Q
    if hg > 1:
        B = B.reshape(b * g, 1, Lp * n).expand(b * g, hg, Lp * n)
        C = C.reshape(b * g, 1, Lp * n).expand(b * g, hg, Lp * n)
    acum = _cumsum_last((dt * A[:, None]).reshape(bh, c, Q))             # (bh, c, Q)
    Bc = B.reshape(bh, c, Q, n) * dt.reshape(bh, c, Q, 1)
    Cc = C.reshape(bh, c, Q, n)
    xc = x.reshape(bh, c, Q, p)
    # inside each chunk: y_i = sum_{j<=i} (C_i . dt_j B_j) exp(acum_i - acum_j) x_j
    decay = _causal_exp(acum[..., :, None] - acum[..., None, :])         # (bh, c, Q, Q)
    y = ((Cc @ Bc.transpose(-1, -2)) * decay) @ xc                       # (bh, c, Q, p)
    if c > 1:
        states = (Bc * torch.exp(acum[..., -1:] - acum)[..., None]).transpose(-1, -2) @ xc
        entering = _entering(states.reshape(bh, c, n * p), acum[..., -1:].squeeze(-1))
        y = y + (Cc * torch.exp(acum)[..., None]) @ entering.reshape(bh, c, n, p)
    y = y.reshape(b, h, Lp, p)
    if pad:
        y = y[:, :, :L]
    return y + skip


def scan_export(x, dt, A, B, C, D, chunk: int = DEFAULT_CHUNK):
    """The export form in this module's layout (``x (b, L, h, p)``, ...)."""
    y = scan_heads_export(x.transpose(1, 2), dt.transpose(1, 2), A, B.transpose(1, 2),
                          C.transpose(1, 2), D, chunk)
    return y.transpose(1, 2)
