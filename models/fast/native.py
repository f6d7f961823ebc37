"""Native CPU loops for the hot spots of both models, forward and backward: the attention window
(the five raw numbers to the window and both Gaussian filterbanks), the filterbank rows alone, and
the LSTM gate algebra. Optional: compiled on first use, used when available, and the PyTorch path
in models/attention.py and models/lstm.py is the fallback.

On CPU, at the models' sizes, each of those blocks runs as eight to twenty whole-tensor PyTorch
ops, each one a pass over memory plus dispatch; models/fast/native_kernels.c does each block in one or
two passes. The source is plain C (no PyTorch headers), built with the system C compiler in about
a second into a cache keyed by the source, the flags, the compiler and this CPU (the build uses
-march=native; models/fast/native_cpu.py), and called through ctypes on the tensors' buffers, each call
checked first against the loop's declared signature (models/fast/native_signatures.py). Results agree
with the PyTorch path to a few ulp (tests/test_native.py), so either path trains the same model.

Used for float32/float64 CPU tensors outside torch.compile tracing; everything else (CUDA, other
dtypes, compiling) takes the PyTorch path, and so does everything inside `with native.disabled():`.
Environment:
  GLIMPSE_NATIVE=0        never build or use the native loops
  GLIMPSE_NATIVE_CACHE    where the built library is kept (default ~/.cache/glimpse/native; if that
                          cannot be written, a private per-user folder in the temporary directory)
  CC                      the C compiler (default: cc, then gcc)
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch

from models.fast.native_cpu import cpu_identity
from models.fast.native_signatures import SIGNATURES, Signature

SOURCE = Path(__file__).with_name("native_kernels.c")
SOURCES = (SOURCE, SOURCE.with_name("native_kernels_body.h"), SOURCE.with_name("native_draw_body.h"))  # .c includes .h
# No -ffast-math and no FMA contraction (see the source: the exponent is exact at the peak only as
# written); -fno-math-errno lets GCC call glibc's vector exp/tanh (libmvec). 512-bit vectors where
# the CPU has them: the window loops ran 15-25% faster than with GCC's default 256. OpenMP: see
# _openmp_flag.
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-ffp-contract=off", "-shared", "-fPIC") + (
    ("-mprefer-vector-width=512",) if platform.machine() in ("x86_64", "AMD64") else ())
COMPILE_TIMEOUT_S = 120

_DTYPES = {torch.float32: ("f32", ctypes.c_float), torch.float64: ("f64", ctypes.c_double)}


def _cache_dirs() -> list[Path]:
    """Where the library may be kept, in order: $GLIMPSE_NATIVE_CACHE, else ~/.cache/glimpse/native,
    then a private per-user folder in the temporary directory (for a read-only or missing home)."""
    first = Path(os.environ.get("GLIMPSE_NATIVE_CACHE") or Path.home() / ".cache" / "glimpse" / "native")
    user = os.getuid() if hasattr(os, "getuid") else "user"
    return [first, Path(tempfile.gettempdir()) / f"glimpse-native-{user}"]


def _private(folder: Path) -> bool:
    """A shared temporary folder is trusted only when it is ours and nobody else can write to it
    (someone else's library there would be loaded into this process)."""
    if not hasattr(os, "getuid") or not folder.exists():
        return True
    st = folder.stat()
    return st.st_uid == os.getuid() and not st.st_mode & 0o022


def _openmp_flag() -> str:
    """-fopenmp when this process already has GNU OpenMP loaded as libgomp.so.1 (PyTorch's Linux CPU
    wheels bring it): the loader matches the library's needed soname to it, so the DRAW loops split
    the batch over PyTorch's own OpenMP threads and the library loads no runtime of its own.
    Otherwise -fopenmp-simd: `omp simd` only, single-threaded."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "-fopenmp-simd"
    # Other copies under their own names (scikit-learn's wheels bring libgomp-<hash>.so.1) do not
    # matter: the library's needed name is libgomp.so.1, and only a loaded libgomp.so.1 answers it.
    return "-fopenmp" if any(line.endswith("/libgomp.so.1") for line in maps.splitlines()) else "-fopenmp-simd"


def _flags() -> tuple[str, ...]:
    return FLAGS + (_openmp_flag(),)


def library_name(cc: str, cpu: str) -> str:
    """The built library's file name: a hash of the sources, the flags, the compiler and the CPU."""
    src = b"".join(p.read_bytes() for p in SOURCES)
    key = hashlib.sha256(b"\0".join([src, " ".join(_flags()).encode(), cc.encode(), cpu.encode()]))
    return f"glimpse_native_{key.hexdigest()[:16]}.so"


def _build(cc: str) -> Path:
    """Compile SOURCE into the first writable cache folder (atomically: a temporary name, then
    rename) unless it is there already; return its path."""
    name = library_name(cc, cpu_identity())
    home, tmp = _cache_dirs()
    dirs = [home] + ([tmp] if _private(tmp) else [])
    for out_dir in dirs:
        if (out_dir / name).exists():
            return out_dir / name
    errors = []
    for out_dir in dirs:
        try:
            out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            return _compile(cc, out_dir, out_dir / name)
        except OSError as err:
            errors.append(f"{out_dir}: {err.strerror or err}")
    raise RuntimeError(f"no writable folder for the native library ({'; '.join(errors)}); set GLIMPSE_NATIVE_CACHE")


def _compile(cc: str, out_dir: Path, target: Path) -> Path:
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".build-", suffix=".so")
    os.close(fd)
    try:
        try:
            proc = subprocess.run([cc, *_flags(), "-o", tmp, str(SOURCE), "-lm"], capture_output=True, text=True,
                                  timeout=COMPILE_TIMEOUT_S)
        except FileNotFoundError:  # not a folder problem: the compiler is missing
            raise RuntimeError(f"the C compiler {cc!r} was not found; set CC to an installed compiler, or "
                               "unset it to use cc or gcc") from None
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} exited with {proc.returncode}: {proc.stderr.strip()[-500:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


_CONST_FIELDS = ("sx", "sy", "sd", "log_max", "s2_min", "s2_max", "delta_max", "margin", "cut_x", "thr_x", "cut_y",
                 "thr_y")
_CONSTS = {sfx: type(f"WindowConsts_{sfx}", (ctypes.Structure,), {"_fields_": [(k, c) for k in _CONST_FIELDS]})
           for sfx, c in _DTYPES.values()}
_SIGNATURES = {(kind, dtype): Signature(kind, args, dtype, scalar, _CONSTS[sfx])
               for kind, args in SIGNATURES.items() for dtype, (sfx, scalar) in _DTYPES.items()}


class Kernel:
    """One C loop for one dtype. Calling it checks every argument against its declared signature
    (models/fast/native_signatures.py) and passes tensors as addresses. ``unchecked`` is the bare ctypes
    function, for loops that pass addresses into buffers they checked with ``check`` beforehand."""

    def __init__(self, signature: Signature, unchecked):
        self.signature, self.unchecked = signature, unchecked

    def __call__(self, *args) -> None:
        self.unchecked(*self.signature.addresses(args))

    def check(self, *args) -> None:
        """Raise as a call with these arguments would, without running the loop."""
        self.signature.addresses(args)


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    for (kind, dtype), sig in _SIGNATURES.items():
        fn = getattr(lib, f"{kind}_{_DTYPES[dtype][0]}")
        fn.argtypes, fn.restype = sig.argtypes, None
    return lib


@functools.lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The loaded native library, or None (disabled, no compiler, or the build failed: warned once)."""
    if os.environ.get("GLIMPSE_NATIVE", "1") == "0":
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        warnings.warn("glimpse: no C compiler found (set CC); using the PyTorch kernels (slower on CPU)",
                      RuntimeWarning, stacklevel=2)
        return None
    try:
        return _declare(ctypes.CDLL(str(_build(cc))))
    except (OSError, RuntimeError, subprocess.SubprocessError) as err:
        warnings.warn(f"glimpse: building the native CPU kernels failed ({err}); using the PyTorch kernels. "
                      f"Set GLIMPSE_NATIVE=0 to silence this.", RuntimeWarning, stacklevel=2)
        return None


class Switch:
    """A path that is on unless a ``with switch.disabled():`` block turns it off (side-by-side timings)."""

    def __init__(self):
        self.on = True

    @contextlib.contextmanager
    def disabled(self):
        before, self.on = self.on, False
        try:
            yield
        finally:
            self.on = before


_switch = Switch()
disabled = _switch.disabled  # within this block every model takes the PyTorch path (timings and tests)


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the native loops can take these tensors: CPU, one float32/float64 dtype, not tracing."""
    if not _switch.on:
        return False
    t0 = tensors[0]
    if t0.dtype not in _DTYPES or t0.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    if any(t.dtype != t0.dtype or t.device.type != "cpu" for t in tensors[1:]):
        return False
    return library() is not None


def kernel(kind: str, dtype: torch.dtype) -> Kernel:
    """The checked C loop ``kind`` for ``dtype`` (argument order: models/fast/native_signatures.py)."""
    lib = library()
    if lib is None:
        raise RuntimeError("the native loops are not built here (see the warning, or GLIMPSE_NATIVE=0); "
                           "check native.usable() before calling them")
    return _kernels(lib)[kind, dtype]


@functools.lru_cache(maxsize=1)
def _kernels(lib: ctypes.CDLL) -> dict:
    return {(kind, dtype): Kernel(sig, getattr(lib, f"{kind}_{_DTYPES[dtype][0]}"))
            for (kind, dtype), sig in _SIGNATURES.items()}


def rows_forward(mu: torch.Tensor, r: torch.Tensor, size: int, cut: float, threshold: float) -> torch.Tensor:
    """models.attention._rows_forward: F (B, n, size) for centres ``mu`` (B, n) and r = 1/sqrt(2 sigma2) (B,)."""
    mu, r = mu.contiguous(), r.contiguous()
    batch, n = mu.shape
    f = mu.new_empty(batch, n, size)
    kernel("rows_forward", mu.dtype)(mu, r, f, batch, n, size, cut, threshold)
    return f


def rows_backward(grad: torch.Tensor, f: torch.Tensor, mu: torch.Tensor, r: torch.Tensor):
    """models.attention._rows_backward: (grad_mu (B, n), grad_r (B,))."""
    grad, f, mu, r = (t.contiguous() for t in (grad, f, mu, r))
    batch, n, size = f.shape
    grad_mu, grad_r = mu.new_empty(batch, n), r.new_empty(batch)
    kernel("rows_backward", f.dtype)(grad, f, mu, r, grad_mu, grad_r, batch, n, size)
    return grad_mu, grad_r


def window_consts(dtype: torch.dtype, **values: float):
    """The constants of window_forward/backward (models.attention passes its clamps and cutoffs)."""
    return _CONSTS[_DTYPES[dtype][0]](**values)


def window_forward(params: torch.Tensor, height: int, width: int, n: int, consts):
    """models.attention.window_from_params in one pass: (v (B, 5) = gX, gY, sigma2, delta, gamma; fx; fy)."""
    params = params.contiguous()
    batch = params.shape[0]
    v, fx, fy = params.new_empty(batch, 5), params.new_empty(batch, n, width), params.new_empty(batch, n, height)
    kernel("window_forward", params.dtype)(params, v, fx, fy, batch, n, height, width, consts)
    return v, fx, fy


def window_backward(params, v, fx, fy, dv, dfx, dfy, height: int, width: int, n: int, consts) -> torch.Tensor:
    """Gradient of window_forward with respect to ``params``; dv, dfx, dfy may be None (zero)."""
    params, v, fx, fy = (t.contiguous() for t in (params, v, fx, fy))
    dv, dfx, dfy = (None if t is None else t.contiguous() for t in (dv, dfx, dfy))
    dparams = params.new_empty(params.shape)
    kernel("window_backward", params.dtype)(params, v, fx, fy, dv, dfx, dfy, dparams, params.shape[0], n, height,
                                            width, consts)
    return dparams


def lstm_forward(gates: torch.Tensor, c_prev: torch.Tensor):
    """LSTM gate algebra, gates (B, 4k) in (i, f, g, o) order: (activated gates, c, tanh(c), h)."""
    gates, c_prev = gates.contiguous(), c_prev.contiguous()
    batch, k = c_prev.shape
    act = torch.empty_like(gates)
    c, tc, h = (torch.empty_like(c_prev) for _ in range(3))
    kernel("lstm_forward", gates.dtype)(gates, c_prev, act, c, tc, h, batch, k)
    return act, c, tc, h


def lstm_backward(dh: torch.Tensor | None, dc: torch.Tensor | None, act: torch.Tensor, c_prev: torch.Tensor,
                  tc: torch.Tensor, need_dc_prev: bool):
    """(d gates (B, 4k), d c_prev (B, k) or None); ``dh``/``dc`` None mean zero gradients."""
    dh, dc = (None if t is None else t.contiguous() for t in (dh, dc))
    act, c_prev, tc = act.contiguous(), c_prev.contiguous(), tc.contiguous()
    batch, k = c_prev.shape
    da = torch.empty_like(act)
    dc_prev = torch.empty_like(c_prev) if need_dc_prev else None
    kernel("lstm_backward", act.dtype)(dh, dc, act, c_prev, tc, da, dc_prev, batch, k)
    return da, dc_prev
