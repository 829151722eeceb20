"""Performance model and load-aware offloading scheduler: pure code, no global state; its only I/O
is reading a profile CSV (`table`), a model's `config.json` (`specs`, when named by path) and the
measured NVLink table in the shared data (`collectives`, when present).

One implementation serves the SGLang proxy and the simulator (see docs/design.md, docs/simulator.md):

- `specs`: `get_gpu(name) -> GPUSpec`, `get_model(name | "path/config.json") -> ModelSpec` (frozen, units in
  field names), `ModelSpec.shard(tp) -> TPShard` (one GPU's weights, heads and KV at tensor parallelism tp).
- `ops`: FLOPs and minimum HBM bytes of each operator (one GPU's shard) from the model shape.
- `collectives`: `get_comm_model(gpu) -> CommModel` (all-reduce, all-gather of a TP group).
- `cost_model`: `get_predictor("roofline" | "table", gpu, model, tp=1, **kw) -> Predictor` with `op_cost(...)`
  and the step helpers `prefill_step_ms`, `decode_nonattn_ms`, `decode_attn_ms`, `kv_transfer_ms`,
  `offload_layer_roundtrip_ms`; `OpCost` carries time, work and utilization fractions.
- `roofline`, `table`: the two predictors (created lazily through the registry).
- `bounds`: `compute_bounds(BoundsInput) -> Bounds` (OB_mem, OB_comp, OB, B_TPOT, B_max, what binds).
- `admission`: `admit` (C1, C2), `LiveStats`, `RequestInfo`, `Decision`, and `make_policy(spec)` for
  `never`, `always`, `ratio:F`, `auto`.
- `calibration`: the paper's A100 per-kernel data the roofline is fitted to. CLIs (explain, profiling,
  calibration fit, Vidur check) are in `adrenaline_sgl.tools`.
"""
