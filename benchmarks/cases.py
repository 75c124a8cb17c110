"""The measurements. Each job builds both sides from the same seed and the same weights, checks
that they compute the same thing, times them interleaved, and returns one JSON-ready record:

  name, group, config, cell, mode, dtype, shape, unit, impls {name: {"value", ...}},
  baseline(s), ratios {"fastrnn/<baseline>": value_fastrnn / value_baseline}, check, note

`value` is the headline figure (median time, or bytes); every ratio is computed from the values
in the same record, so ratio < 1 means fastrnn is faster / smaller.
"""
import math
import warnings
from typing import Callable, Dict, List

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from . import configs as C
from .corpus import CharLM, batches, encode, load_text, text_hash
from .timing import Plan, compare

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}
FAST = "fastrnn"
TORCH = "torch.nn"


def _fastrnn():
    import fastrnn

    return fastrnn


def _timed_record(name, group, config, cell, mode, dtype, shape, timings, baselines, unit="ms", impl_names=None,
                  check=None, note=""):
    impls = {}
    for n, t in timings.items():
        impls[n] = dict(t, value=t["ms"]["median"])
        if impl_names and n in impl_names:
            impls[n]["impl"] = impl_names[n]
    return {
        "name": name, "group": group, "config": config, "cell": cell, "mode": mode, "dtype": dtype,
        "shape": shape, "unit": unit, "impls": impls, "baselines": list(baselines),
        "ratios": {f"{FAST}/{b}": impls[FAST]["value"] / impls[b]["value"] for b in baselines},
        "check": check or {}, "note": note,
    }


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().double() - b.detach().double()).abs().max().item()


GATES = {"lstm": 4, "gru": 3}


def rnn_gemm_flops(cell: str, positions: int, I: int, H: int, layers: int, backward: bool) -> int:
    """GEMM flops of a one-direction stack over `positions` (step, batch entry) pairs (T * B, or
    the sum of the lengths: padded positions do no useful work). Layer l, input width I_l (I,
    then H), G gates: forward 2 * positions * G*H * (I_l + H) (input projection x W_ih^T and
    recurrent product h W_hh^T); the backward's GEMMs are two of each size again (dx = dgates W_ih
    and dW_ih = dgates^T x; dh = dgates W_hh and dW_hh = dgates^T h), so fwd+bwd is 3x the forward.
    The pointwise cell math is not counted."""
    G = GATES[cell]
    fwd = sum(2 * positions * G * H * ((I if layer == 0 else H) + H) for layer in range(layers))
    return 3 * fwd if backward else fwd


def _flops(count: int, formula: str) -> dict:
    return {"count": int(count), "formula": formula}


_RNN_FORMULA = ("sum over layers of 2*N*G*H*(I_l + H), N = (step, entry) positions; x3 with the backward "
                "(dx, dW_ih, dh, dW_hh GEMMs); pointwise not counted")


def _ops_of(cell: str, backward: bool):
    return [f"{cell}_forward"] + ([f"{cell}_backward"] if backward else [])


def _paths(ops) -> dict:
    """Which implementation fastrnn ran for each op of the call just made (fastrnn._C.last_path)."""
    fr = _fastrnn()
    return {op: fr._C.last_path(op) for op in ops}


# ---------------------------------------------------------------- layer configs


class _LayerPair:
    """nn.LSTM / nn.GRU and the fastrnn equivalent on the same weights. One layer: fastrnn's
    functional layer on the very parameters of the torch module (isolates the kernels).
    Several layers: fastrnn.LSTM / GRU loaded with the torch module's state_dict."""

    def __init__(self, cfg: C.LayerConfig, cell: str, dtype: torch.dtype, device: torch.device):
        fr = _fastrnn()
        torch.manual_seed(0)
        ref_cls = nn.LSTM if cell == "lstm" else nn.GRU
        self.ref = ref_cls(cfg.I, cfg.H, num_layers=cfg.layers).to(device=device, dtype=dtype)
        if cfg.layers == 1:
            w = [self.ref.weight_ih_l0, self.ref.weight_hh_l0, self.ref.bias_ih_l0, self.ref.bias_hh_l0]
            if cell == "lstm":
                self.fast_fn = lambda x, lengths=None: fr.functional.lstm_layer(x, None, None, *w, lengths=lengths)[0]
            else:
                self.fast_fn = lambda x, lengths=None: fr.functional.gru_layer(x, None, *w, lengths=lengths)[0]
            self.fast_params = list(self.ref.parameters())
            self.fast_impl = f"fastrnn.functional.{cell}_layer"
        else:
            mod_cls = fr.LSTM if cell == "lstm" else fr.GRU
            self.fast_mod = mod_cls(cfg.I, cfg.H, num_layers=cfg.layers).to(device=device, dtype=dtype)
            self.fast_mod.load_state_dict(self.ref.state_dict())
            self.fast_fn = lambda x, lengths=None: self.fast_mod(x, lengths=lengths)[0]
            self.fast_params = list(self.fast_mod.parameters())
            self.fast_impl = f"fastrnn.{mod_cls.__name__}"
        self.ref_fn = lambda x: self.ref(x)[0]
        self.ref_impl = f"torch.nn.{ref_cls.__name__}"

    def train(self, on: bool):
        self.ref.train(on)
        if hasattr(self, "fast_mod"):
            self.fast_mod.train(on)


def _zero_grads(params, x):
    for p in params:
        p.grad = None
    x.grad = None


def _fwd(fn, x):
    def run():
        with torch.no_grad():
            return fn(x)
    return run


def _fwdtrain(fn, x):
    # training-mode forward with autograd recording (what is saved for backward), no backward
    def run():
        return fn(x)
    return run


def _fwdbwd(fn, x, gy, params):
    def run():
        _zero_grads(params, x)
        y = fn(x)
        y.backward(gy)
        return y
    return run


def layer_jobs(cfg: C.LayerConfig, cells, dtypes, device, plan: Plan):
    """[(label, job)], each job returning a list of records."""
    jobs = []
    for dname in dtypes:
        for cell in cells:
            for mode in ("fwd", "fwdtrain", "fwdbwd"):
                jobs.append((f"layer {cfg.name} {cell} {mode} {dname}",
                             lambda cell=cell, mode=mode, dname=dname: [layer_time(cfg, cell, mode, dname, device, plan)]))
            jobs.append((f"memory {cfg.name} {cell} {dname}",
                         lambda cell=cell, dname=dname: layer_memory(cfg, cell, dname, device)))
    return jobs


def _inputs(cfg, dtype, device, requires_grad):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(cfg.T, cfg.B, cfg.I, generator=g).to(device=device, dtype=dtype)
    gy = torch.randn(cfg.T, cfg.B, cfg.H, generator=g).to(device=device, dtype=dtype)
    return x.requires_grad_(requires_grad), gy


def layer_fns(cfg, cell, mode, dname, device):
    """{impl: callable} for one layer case, and the input x. Also used by test_layer_bench.py."""
    dtype = DTYPES[dname]
    pair = _LayerPair(cfg, cell, dtype, device)
    x, gy = _inputs(cfg, dtype, device, requires_grad=(mode != "fwd"))
    if mode == "fwd":
        pair.train(False)  # inference: cuDNN's inference path, nothing saved on either side
        fns = {FAST: _fwd(pair.fast_fn, x), TORCH: _fwd(pair.ref_fn, x)}
    elif mode == "fwdtrain":
        pair.train(True)
        fns = {FAST: _fwdtrain(pair.fast_fn, x), TORCH: _fwdtrain(pair.ref_fn, x)}
    else:
        pair.train(True)
        fns = {FAST: _fwdbwd(pair.fast_fn, x, gy, pair.fast_params),
               TORCH: _fwdbwd(pair.ref_fn, x, gy, list(pair.ref.parameters()))}
    return fns, pair, x


def _first_calls(fns, x, ops=()):
    """One call of each side (it doubles as the first warm-up round): outputs, input grads, and
    the paths fastrnn's side ran for `ops` (read right after its call, before another fastrnn
    side can overwrite the record)."""
    ys, dxs, paths = {}, {}, {}
    for n, fn in fns.items():
        ys[n] = fn().detach()
        if n == FAST:
            paths = _paths(ops)
        dxs[n] = None if x.grad is None else x.grad.clone()
    return ys, dxs, paths


def layer_time(cfg, cell, mode, dname, device, plan):
    fns, pair, x = layer_fns(cfg, cell, mode, dname, device)
    ys, dxs, paths = _first_calls(fns, x, _ops_of(cell, mode == "fwdbwd"))
    check = {"max_abs_diff_y": _max_diff(ys[FAST], ys[TORCH])}
    if mode == "fwdbwd":
        check["max_abs_diff_dx"] = _max_diff(dxs[FAST], dxs[TORCH])
    timings = compare(fns, device, plan, warm_rounds=1)
    note = cfg.note + ("; " if cfg.note else "") + (
        {"fwd": "forward under no_grad, eval mode",
         "fwdtrain": "training forward: grad enabled, input requires grad, no backward",
         "fwdbwd": "forward + backward of y (input requires grad)"}[mode])
    rec = _timed_record(f"layer/{cfg.name}/{cell}/{mode}/{dname}", "layer", cfg.name, cell, mode, dname,
                        cfg.shape(), timings, [TORCH], impl_names={FAST: pair.fast_impl, TORCH: pair.ref_impl},
                        check=check, note=note)
    rec["flops"] = _flops(rnn_gemm_flops(cell, cfg.T * cfg.B, cfg.I, cfg.H, cfg.layers, mode == "fwdbwd"),
                          _RNN_FORMULA)
    rec["impls"][FAST]["paths"] = paths
    return rec


def _storage_key(t: torch.Tensor):
    s = t.untyped_storage()
    return s.data_ptr(), s.nbytes()


def saved_bytes(forward: Callable[[], torch.Tensor], exclude: List[torch.Tensor]):
    """Bytes of the distinct storages held from forward to backward: every tensor autograd saves
    for backward (caught with saved_tensors_hooks) plus the output y, minus storages of the
    inputs and parameters (they exist anyway). Device independent, so it also works on CPU,
    where PyTorch keeps no allocator statistics."""
    held = {}

    def pack(t):
        ptr, n = _storage_key(t)
        if ptr:
            held[ptr] = n
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = forward()
    pack(y)
    skip = {_storage_key(t)[0] for t in exclude}
    return y, sum(n for p, n in held.items() if p not in skip)


def layer_memory(cfg, cell, dname, device):
    dtype = DTYPES[dname]
    pair = _LayerPair(cfg, cell, dtype, device)
    pair.train(True)
    x, gy = _inputs(cfg, dtype, device, requires_grad=True)
    sides = {FAST: (pair.fast_fn, pair.fast_params), TORCH: (pair.ref_fn, list(pair.ref.parameters()))}
    shape = cfg.shape()
    values = {}
    for n, (fn, params) in sides.items():
        _zero_grads(params, x)
        y, nbytes = saved_bytes(lambda: fn(x), params + [x, gy])
        y.backward(gy)
        del y
        values[n] = {"saved": nbytes}
        if device.type == "cuda":
            _zero_grads(params, x)
            torch.cuda.synchronize(device)
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            y = fn(x)
            y.backward(gy)
            del y
            torch.cuda.synchronize(device)
            values[n]["peak"] = torch.cuda.max_memory_allocated(device) - base
    notes = {"saved": "bytes held between forward and backward: tensors saved for backward + output y, "
                      "distinct storages, inputs and parameters excluded (saved_tensors_hooks)",
             "peak": "torch.cuda.max_memory_allocated during forward+backward minus memory allocated before "
                     "(parameter and input gradients included)"}
    records = []
    for metric in values[FAST]:
        impls = {n: {"value": values[n][metric]} for n in values}
        records.append({
            "name": f"memory/{cfg.name}/{cell}/{metric}/{dname}", "group": "memory", "config": cfg.name,
            "cell": cell, "mode": metric, "dtype": dname, "shape": shape, "unit": "bytes", "impls": impls,
            "baselines": [TORCH], "ratios": {f"{FAST}/{TORCH}": impls[FAST]["value"] / impls[TORCH]["value"]},
            "check": {}, "note": notes[metric]})
    return records


# ---------------------------------------------------------------- varlen


def varlen_lengths(T: int, B: int) -> torch.Tensor:
    lo = max(1, round(C.VARLEN_MIN_FRAC * T))
    g = torch.Generator().manual_seed(C.VARLEN_SEED)
    return torch.randint(lo, T + 1, (B,), generator=g, dtype=torch.int64)


def varlen_jobs(base: C.LayerConfig, cells, dtypes, device, plan):
    return [(f"varlen {base.name} {cell} fwdbwd {d}", lambda cell=cell, d=d: [varlen_time(base, cell, d, device, plan)])
            for d in dtypes for cell in cells]


def varlen_time(cfg, cell, dname, device, plan):
    dtype = DTYPES[dname]
    pair = _LayerPair(cfg, cell, dtype, device)
    pair.train(True)
    x, gy = _inputs(cfg, dtype, device, requires_grad=True)
    lengths = varlen_lengths(cfg.T, cfg.B)  # on the CPU, as pack_padded_sequence wants them
    ref_params = list(pair.ref.parameters())

    def packed(inp):
        out, _ = pair.ref(pack_padded_sequence(inp, lengths, enforce_sorted=False))
        return pad_packed_sequence(out, total_length=cfg.T)[0]

    PACKED, PADDED = "torch.nn packed", "torch.nn padded"
    fns = {FAST: _fwdbwd(lambda inp: pair.fast_fn(inp, lengths=lengths), x, gy, pair.fast_params),
           PACKED: _fwdbwd(packed, x, gy, ref_params),
           PADDED: _fwdbwd(pair.ref_fn, x, gy, ref_params)}
    ys, _, paths = _first_calls(fns, x, _ops_of(cell, True))
    check = {"max_abs_diff_y_vs_packed": _max_diff(ys[FAST], ys[PACKED])}
    timings = compare(fns, device, plan, warm_rounds=1)
    shape = dict(cfg.shape(), lengths_min=int(lengths.min()), lengths_max=int(lengths.max()),
                 lengths_mean=float(lengths.double().mean()), seed=C.VARLEN_SEED)
    rec = _timed_record(f"varlen/{cfg.name}/{cell}/fwdbwd/{dname}", "varlen", "varlen", cell, "fwdbwd", dname, shape,
                        timings, [PACKED, PADDED], check=check,
                        impl_names={FAST: pair.fast_impl + "(lengths=)",
                                    PACKED: "pack_padded_sequence(enforce_sorted=False) -> nn -> pad_packed_sequence",
                                    PADDED: "nn on the padded tensor (ignores lengths)"},
                        note=f"lengths uniform in [{shape['lengths_min']}..{cfg.T}] (seed {C.VARLEN_SEED}); "
                             "packing and unpacking are inside the timed region")
    rec["flops"] = _flops(rnn_gemm_flops(cell, int(lengths.sum()), cfg.I, cfg.H, cfg.layers, True),
                          _RNN_FORMULA + "; N = the sum of the lengths (the padded side computes more)")
    rec["impls"][FAST]["paths"] = paths
    return rec


# ---------------------------------------------------------------- weight drop


class _WeightDrop(nn.Module):
    """The parametrization AWD-LSTM users put on nn.LSTM's weight_hh_l0 today: a fresh DropConnect
    mask (F.dropout: 0 or 1/(1-p)) each time the weight is read in training."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, w):
        return nn.functional.dropout(w, self.p, self.training)


def wdrop_jobs(cfg: C.LayerConfig, dtypes, device, plan):
    return [(f"wdrop {cfg.name} lstm fwdbwd {d}", lambda d=d: [wdrop_time(cfg, d, device, plan)]) for d in dtypes]


def wdrop_time(cfg, dname, device, plan):
    """fwd+bwd in training of fastrnn.LSTM(weight_drop=p) against nn.LSTM with weight drop as a
    parametrization of weight_hh_l0 (what users run today) and against plain fastrnn.LSTM (the
    option's overhead), all on the same weights."""
    import torch.nn.utils.parametrize as parametrize

    fr = _fastrnn()
    dtype = DTYPES[dname]
    PARAM, PLAIN = "torch.nn + parametrize", "fastrnn plain"
    torch.manual_seed(0)
    ref = nn.LSTM(cfg.I, cfg.H).to(device=device, dtype=dtype)
    fast = fr.LSTM(cfg.I, cfg.H, weight_drop=C.WDROP_P).to(device=device, dtype=dtype)
    plain = fr.LSTM(cfg.I, cfg.H).to(device=device, dtype=dtype)
    fast.load_state_dict(ref.state_dict())
    plain.load_state_dict(ref.state_dict())
    parametrize.register_parametrization(ref, "weight_hh_l0", _WeightDrop(C.WDROP_P))
    x, gy = _inputs(cfg, dtype, device, requires_grad=True)
    mods = {FAST: fast, PARAM: ref, PLAIN: plain}
    # eval: no mask anywhere, so all three compute the same; training: the mask changes the output
    for m in mods.values():
        m.eval()
    with torch.no_grad():
        ys = {n: m(x)[0] for n, m in mods.items()}
        for m in mods.values():
            m.train()
        y_train = fast(x)[0]
    check = {"max_abs_diff_y_eval_vs_param": _max_diff(ys[FAST], ys[PARAM]),
             "max_abs_diff_y_eval_vs_plain": _max_diff(ys[FAST], ys[PLAIN]),
             "mask_changes_y": _max_diff(y_train, ys[FAST]) > 0}
    fns = {n: _fwdbwd(lambda inp, m=m: m(inp)[0], x, gy, list(m.parameters())) for n, m in mods.items()}
    _, _, paths = _first_calls(fns, x, _ops_of("lstm", True))  # a training warm-up round
    timings = compare(fns, device, plan, warm_rounds=1)
    rec = _timed_record(f"wdrop/{cfg.name}/lstm/fwdbwd/{dname}", "wdrop", cfg.name, "lstm", "fwdbwd", dname,
                        dict(cfg.shape(), p=C.WDROP_P), timings, [PARAM, PLAIN], check=check,
                        impl_names={FAST: f"fastrnn.LSTM(weight_drop={C.WDROP_P})",
                                    PARAM: "torch.nn.LSTM, weight_hh_l0 parametrized with F.dropout",
                                    PLAIN: "fastrnn.LSTM"},
                        note=cfg.note + "; training forward + backward of y (input requires grad), a fresh mask "
                                        "each call on both weight-drop sides")
    rec["flops"] = _flops(rnn_gemm_flops("lstm", cfg.T * cfg.B, cfg.I, cfg.H, cfg.layers, True), _RNN_FORMULA)
    rec["impls"][FAST]["paths"] = paths
    return rec


# ---------------------------------------------------------------- zoneout + recurrent dropout


class _ZoneoutLoop(nn.Module):
    """What users write today for an LSTM with zoneout (on h and c) and recurrent dropout: a
    TorchScript loop over nn.LSTMCell (scripted by the caller). Recurrent dropout: one [B, H] mask
    a call, multiplying h only where it enters W_hh (LSTMCell's h argument); zoneout: a fresh
    Bernoulli mask every step in training, the expectation in eval."""

    def __init__(self, I: int, H: int, zoneout: float, recurrent_dropout: float):
        super().__init__()
        self.cell = nn.LSTMCell(I, H)
        self.H, self.zoneout, self.recurrent_dropout = H, zoneout, recurrent_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[1]
        h = x.new_zeros(B, self.H)
        c = x.new_zeros(B, self.H)
        m = nn.functional.dropout(x.new_ones(B, self.H), self.recurrent_dropout, self.training)
        p = self.zoneout
        ys = []
        for t in range(x.shape[0]):
            hn, cn = self.cell(x[t], (h * m, c))
            if self.training:
                zh = torch.bernoulli(torch.full_like(h, p))
                zc = torch.bernoulli(torch.full_like(c, p))
            else:
                zh = torch.full_like(h, p)
                zc = torch.full_like(c, p)
            h = zh * h + (1 - zh) * hn
            c = zc * c + (1 - zc) * cn
            ys.append(h)
        return torch.stack(ys)


def zoneout_jobs(cfg: C.LayerConfig, dtypes, device, plan):
    return [(f"zoneout {cfg.name} lstm {mode} {d}", lambda d=d, mode=mode: [zoneout_time(cfg, mode, d, device, plan)])
            for d in dtypes for mode in ("fwdbwd", "fwd")]


def zoneout_time(cfg, mode, dname, device, plan):
    """fastrnn.LSTM(zoneout, zoneout_cell, recurrent_dropout) against the TorchScript LSTMCell loop
    with the same options and against plain fastrnn.LSTM (the options' overhead), on the same
    weights: fwdbwd in training (masks drawn every call on both regularised sides), fwd in eval
    under no_grad (the expectation: no masks)."""
    fr = _fastrnn()
    dtype = DTYPES[dname]
    LOOP, PLAIN = "TorchScript LSTMCell loop", "fastrnn plain"
    torch.manual_seed(0)
    loop = _ZoneoutLoop(cfg.I, cfg.H, C.ZONEOUT_P, C.RECDROP_P).to(device=device, dtype=dtype)
    fast = fr.LSTM(cfg.I, cfg.H, zoneout=C.ZONEOUT_P, zoneout_cell=C.ZONEOUT_P,
                   recurrent_dropout=C.RECDROP_P).to(device=device, dtype=dtype)
    plain = fr.LSTM(cfg.I, cfg.H).to(device=device, dtype=dtype)
    cell = loop.cell
    weights = {"weight_ih_l0": cell.weight_ih, "weight_hh_l0": cell.weight_hh, "bias_ih_l0": cell.bias_ih,
               "bias_hh_l0": cell.bias_hh}
    fast.load_state_dict(weights)
    plain.load_state_dict(weights)
    with warnings.catch_warnings():  # torch.jit.script's deprecation notice: the users' way, measured as it is
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.script(loop)
    x, gy = _inputs(cfg, dtype, device, requires_grad=mode == "fwdbwd")
    mods = {FAST: fast, LOOP: scripted, PLAIN: plain}
    # eval: both regularised sides compute the expectation, without draws: the same function
    for m in mods.values():
        m.eval()
    with torch.no_grad():
        y_fast, y_loop, y_plain = fast(x)[0], scripted(x), plain(x)[0]
        fast.train()
        y_train = fast(x)[0]
    check = {"max_abs_diff_y_eval_vs_loop": _max_diff(y_fast, y_loop),
             "zoneout_changes_eval_y": _max_diff(y_fast, y_plain) > 0,
             "masks_change_y": _max_diff(y_train, y_fast) > 0}
    calls = {FAST: lambda inp: fast(inp)[0], LOOP: scripted, PLAIN: lambda inp: plain(inp)[0]}
    for m in mods.values():  # every side in the mode timed
        m.train(mode == "fwdbwd")
    if mode == "fwdbwd":
        fns = {n: _fwdbwd(calls[n], x, gy, list(m.parameters())) for n, m in mods.items()}
    else:
        fns = {n: _fwd(calls[n], x) for n in mods}
    fns[FAST]()  # the paths of fastrnn's side, read before another fastrnn side runs
    paths = _paths(_ops_of("lstm", mode == "fwdbwd"))
    timings = compare(fns, device, plan)
    rec = _timed_record(f"zoneout/{cfg.name}/lstm/{mode}/{dname}", "zoneout", cfg.name, "lstm", mode, dname,
                         dict(cfg.shape(), zoneout=C.ZONEOUT_P, zoneout_cell=C.ZONEOUT_P,
                              recurrent_dropout=C.RECDROP_P),
                         timings, [LOOP, PLAIN], check=check,
                         impl_names={FAST: f"fastrnn.LSTM(zoneout={C.ZONEOUT_P}, zoneout_cell={C.ZONEOUT_P}, "
                                           f"recurrent_dropout={C.RECDROP_P})",
                                     LOOP: "torch.jit.script loop over nn.LSTMCell with the same options",
                                     PLAIN: "fastrnn.LSTM"},
                         note=cfg.note + ("; training forward + backward of y (input requires grad), fresh masks "
                                          "each call on both regularised sides" if mode == "fwdbwd" else
                                          "; eval forward under no_grad (zoneout's expectation, no masks)"))
    rec["flops"] = _flops(rnn_gemm_flops("lstm", cfg.T * cfg.B, cfg.I, cfg.H, cfg.layers, mode == "fwdbwd"),
                          _RNN_FORMULA)
    rec["impls"][FAST]["paths"] = paths
    return rec


# ---------------------------------------------------------------- layer norm


def _layernorm_lstm_loop(x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor,
                         b_ih: torch.Tensor, b_hh: torch.Tensor, ln_ih: torch.Tensor, ln_hh: torch.Tensor,
                         ln_c_w: torch.Tensor, ln_c_b: torch.Tensor) -> torch.Tensor:
    """What users run today for a layer-normalised LSTM: PyTorch's custom-RNN recipe, a
    layer-norm LSTM cell (the three norms by F.layer_norm) looped over time under TorchScript.
    x [T, B, I] -> y [T, B, H]. Scripted by layernorm_time."""
    G = w_hh.shape[0]
    H = c.shape[1]
    ys = []
    for t in range(x.shape[0]):
        gates = (torch.nn.functional.layer_norm(torch.mm(x[t], w_ih.t()), [G], ln_ih, None, 1e-5) + b_ih
                 + torch.nn.functional.layer_norm(torch.mm(h, w_hh.t()), [G], ln_hh, None, 1e-5) + b_hh)
        i, f, g, o = gates.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(torch.nn.functional.layer_norm(c, [H], ln_c_w, ln_c_b, 1e-5))
        ys.append(h)
    return torch.stack(ys)


def layernorm_jobs(cfg: C.LayerConfig, dtypes, device, plan):
    return [(f"layernorm {cfg.name} lstm {mode} {d}", lambda d=d, mode=mode: [layernorm_time(cfg, mode, d, device, plan)])
            for d in dtypes for mode in ("fwd", "fwdbwd")]


def layernorm_time(cfg, mode, dname, device, plan):
    """fastrnn.LSTM(layer_norm=True) against the TorchScript layer-norm LSTM loop (the same
    parameters) and against plain fastrnn.LSTM (the option's overhead): inference (fwd, no
    grad) or training forward + backward (fwdbwd)."""
    fr = _fastrnn()
    dtype = DTYPES[dname]
    SCRIPT, PLAIN = "TorchScript loop", "fastrnn plain"
    torch.manual_seed(0)
    fast = fr.LSTM(cfg.I, cfg.H, layer_norm=True).to(device=device, dtype=dtype)
    with torch.no_grad():  # norms off their identity init, so the comparison covers them
        for name, p in fast.named_parameters():
            if "_ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    plain = fr.LSTM(cfg.I, cfg.H).to(device=device, dtype=dtype)
    plain.load_state_dict({k: v for k, v in fast.state_dict().items() if "_ln_" not in k})
    loop = torch.jit.script(_layernorm_lstm_loop)
    z = torch.zeros(cfg.B, cfg.H, device=device, dtype=dtype)
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_ln_ih", "weight_ln_hh", "weight_ln_c", "bias_ln_c")
    w = [fast.get_parameter(f"{n}_l0") for n in names]
    x, gy = _inputs(cfg, dtype, device, requires_grad=mode == "fwdbwd")
    mods = {FAST: lambda inp: fast(inp)[0], SCRIPT: lambda inp: loop(inp, z, z, *w), PLAIN: lambda inp: plain(inp)[0]}
    with torch.no_grad():
        ys = {n: f(x) for n, f in mods.items()}
    check = {"max_abs_diff_y_vs_script": _max_diff(ys[FAST], ys[SCRIPT])}
    if mode == "fwd":
        fns = {n: _fwd(f, x) for n, f in mods.items()}
    else:
        params = {FAST: list(fast.parameters()), SCRIPT: w, PLAIN: list(plain.parameters())}
        fns = {n: _fwdbwd(f, x, gy, params[n]) for n, f in mods.items()}
        fns[FAST]()  # each fn's first call (warm_rounds=1 below); the two dx compared
        dx_fast = x.grad.clone()
        fns[SCRIPT]()
        check["max_abs_diff_dx_vs_script"] = _max_diff(dx_fast, x.grad)
        fns[PLAIN]()
    fns[FAST]()  # the paths of fastrnn's side, read before another fastrnn side runs
    paths = _paths(_ops_of("lstm", mode == "fwdbwd"))
    timings = compare(fns, device, plan, warm_rounds=1 if mode == "fwdbwd" else 0)
    rec = _timed_record(f"layernorm/{cfg.name}/lstm/{mode}/{dname}", "layernorm", cfg.name, "lstm", mode, dname,
                         cfg.shape(), timings, [SCRIPT, PLAIN], check=check,
                         impl_names={FAST: "fastrnn.LSTM(layer_norm=True)",
                                     SCRIPT: "torch.jit.script'ed layer-norm LSTM cell loop (F.layer_norm x 3)",
                                     PLAIN: "fastrnn.LSTM"},
                         note=cfg.note + ("; inference (no grad)" if mode == "fwd" else
                                          "; training forward + backward of y (input requires grad)"))
    # the useful GEMM work, the plain layer's (the norms' own work and the backward's recomputed
    # products are overhead of the implementation)
    rec["flops"] = _flops(rnn_gemm_flops("lstm", cfg.T * cfg.B, cfg.I, cfg.H, cfg.layers, mode == "fwdbwd"),
                          _RNN_FORMULA)
    rec["impls"][FAST]["paths"] = paths
    return rec


# ---------------------------------------------------------------- char-LM training step


def charlm_pair(vocab_size: int, p: dict, device, dtype):
    """(torch.nn model, fastrnn model): the demo's CharLM (examples/charlm.py) without dropout,
    at the sizes in `p` (configs.CHARLM), on identical weights."""
    torch.manual_seed(0)
    ref = CharLM(vocab_size, p["emb"], p["H"], p["layers"], "lstm", rnn="torch").to(device=device, dtype=dtype)
    fast = CharLM(vocab_size, p["emb"], p["H"], p["layers"], "lstm", rnn="fastrnn").to(device=device, dtype=dtype)
    fast.load_state_dict(ref.state_dict())  # drop-in: same parameter names and shapes
    return ref, fast


def train_jobs(dtypes, device, plan, quick, corpus_path=None):
    return [(f"train charlm {d}", lambda d=d: [train_time(d, device, plan, quick, corpus_path)]) for d in dtypes]


def train_time(dname, device, plan, quick, corpus_path=None):
    dtype = DTYPES[dname]
    p = dict(C.CHARLM)
    if quick:
        p["T"] = C.QUICK_T
    text, corpus_name = load_text(corpus_path)
    data, vocab = encode(text)
    V = len(vocab)
    data_batches = [(a.to(device), b.to(device)) for a, b in batches(data, p["T"], p["B"], count=8, seed=0)]
    ref, fast = charlm_pair(V, p, device, dtype)

    def make_step(model):
        opt = torch.optim.Adam(model.parameters(), lr=p["lr"])
        state = {"i": 0, "losses": []}

        def step():
            x, y = data_batches[state["i"] % len(data_batches)]
            state["i"] += 1
            opt.zero_grad(set_to_none=True)
            logits, _ = model(x)
            loss = nn.functional.cross_entropy(logits.reshape(-1, V).float(), y.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), p["clip"])
            opt.step()
            state["losses"].append(loss.detach())  # no .item(): no sync inside the timed step
        return step, state

    (fs, fstate), (rs, rstate) = make_step(fast), make_step(ref)
    timings = compare({FAST: fs, TORCH: rs}, device, plan)
    tokens = p["B"] * p["T"]
    rec = _timed_record(f"train/charlm/lstm/step/{dname}", "train", "charlm", "lstm", "train_step", dname,
                        {"T": p["T"], "B": p["B"], "emb": p["emb"], "H": p["H"], "layers": p["layers"], "vocab": V},
                        timings, [TORCH], unit="ms/step",
                        impl_names={FAST: "fastrnn.LSTM", TORCH: "torch.nn.LSTM"},
                        note=f"embedding -> {p['layers']}-layer LSTM -> linear -> cross-entropy -> backward -> "
                             f"clip_grad_norm_({p['clip']}) -> Adam(lr={p['lr']}); corpus {corpus_name} "
                             f"({len(text)} chars, vocab {V}); ratio = time ratio (= torch tokens/s / fastrnn tokens/s)")
    for n, st in ((FAST, fstate), (TORCH, rstate)):
        losses = [float(v) for v in st["losses"]]
        rec["impls"][n]["tokens_per_s"] = tokens / (rec["impls"][n]["value"] / 1e3)
        rec["impls"][n]["steps"] = len(losses)
        rec["impls"][n]["loss_first"] = losses[0]
        rec["impls"][n]["loss_last"] = losses[-1]
    rec["tokens_per_s_ratio"] = {f"{FAST}/{TORCH}": rec["impls"][FAST]["tokens_per_s"] / rec["impls"][TORCH]["tokens_per_s"]}
    rec["check"] = {"loss_first_abs_diff": abs(rec["impls"][FAST]["loss_first"] - rec["impls"][TORCH]["loss_first"]),
                    "loss_uniform": math.log(V)}
    rec["corpus"] = {"name": corpus_name, "chars": len(text), "vocab": V, "sha1": text_hash(text)}
    positions = p["B"] * p["T"]
    rec["flops"] = _flops(rnn_gemm_flops("lstm", positions, p["emb"], p["H"], p["layers"], True)
                          + 3 * 2 * positions * p["H"] * V,
                          _RNN_FORMULA + "; plus the output layer, 3 * 2*N*H*V (forward, dlogits W, dW)")
    rec["impls"][FAST]["paths"] = _paths(_ops_of("lstm", True))  # the torch side runs no fastrnn op
    return rec


# ---------------------------------------------------------------- generation


def generate_jobs(dtypes, device, plan, quick, corpus_path=None):
    return [(f"generate charlm {d}", lambda d=d: [generate_time(d, device, plan, quick, corpus_path)]) for d in dtypes]


def generate_time(dname, device, plan, quick, corpus_path=None):
    fr = _fastrnn()
    dtype = DTYPES[dname]
    p = dict(C.GENERATE)
    n_chars = C.QUICK_CHARS if quick else p["chars"]
    text, corpus_name = load_text(corpus_path)
    _, vocab = encode(text)
    V = len(vocab)
    torch.manual_seed(0)
    emb = nn.Embedding(V, p["emb"]).to(device=device, dtype=dtype)
    head = nn.Linear(p["H"], V).to(device=device, dtype=dtype)
    sizes = [p["emb"]] + [p["H"]] * (p["layers"] - 1)
    ref_cells = [nn.LSTMCell(i, p["H"]).to(device=device, dtype=dtype) for i in sizes]
    fast_cells = [fr.LSTMCell(i, p["H"]).to(device=device, dtype=dtype) for i in sizes]
    for f, r in zip(fast_cells, ref_cells):
        f.load_state_dict(r.state_dict())
    start = vocab.index("T") if "T" in vocab else 0

    def make(cells):
        gen = torch.Generator(device=device)
        out = torch.empty(n_chars, dtype=torch.int64, device=device)

        def run():
            gen.manual_seed(0)  # both sides sample with the same random stream
            tok = torch.full((1,), start, dtype=torch.int64, device=device)
            states = [None] * len(cells)
            with torch.no_grad():
                for i in range(n_chars):
                    h = emb(tok)
                    for k, cell in enumerate(cells):
                        states[k] = cell(h, states[k])
                        h = states[k][0]
                    probs = torch.softmax(head(h).float() / p["temperature"], dim=-1)
                    tok = torch.multinomial(probs, 1, generator=gen).view(1)
                    out[i] = tok[0]
            return out
        return run

    fns = {FAST: make(fast_cells), TORCH: make(ref_cells)}
    samples = {n: "".join(vocab[i] for i in fns[n]().tolist()) for n in fns}
    timings = compare(fns, device, plan, warm_rounds=1)
    for t in timings.values():  # per generated character
        for key in t:
            t[key] = {k: (v / n_chars if k != "n" else v) for k, v in t[key].items()}
    rec = _timed_record(f"generate/charlm/lstm/char/{dname}", "generate", "charlm", "lstm", "generate", dname,
                        {"B": 1, "emb": p["emb"], "H": p["H"], "layers": p["layers"], "vocab": V, "chars": n_chars},
                        timings, [TORCH], unit="ms/char",
                        impl_names={FAST: "fastrnn.LSTMCell x%d" % p["layers"],
                                    TORCH: "torch.nn.LSTMCell x%d" % p["layers"]},
                        note="batch 1, embedding -> LSTMCell per layer -> linear -> softmax -> multinomial, "
                             "no_grad, untrained weights; time of a whole sample divided by its length")
    rec["check"] = {"same_sample": samples[FAST] == samples[TORCH]}
    rec["flops"] = _flops(rnn_gemm_flops("lstm", 1, p["emb"], p["H"], p["layers"], False) + 2 * p["H"] * V,
                          _RNN_FORMULA + ", per character (N = 1); plus the output layer, 2*H*V")
    rec["impls"][FAST]["paths"] = _paths(_ops_of("lstm", False))  # the torch side runs no fastrnn op
    rec["samples"] = {n: s[:80] for n, s in samples.items()}
    return rec
