"""Performance model and load-aware offloading scheduler: pure code, no I/O, no global state.

One implementation serves the SGLang proxy and the simulator (see docs/design.md, docs/simulator.md):

- `specs`: `get_gpu(name) -> GPUSpec`, `get_model(name) -> ModelSpec` (frozen, units in field names).
- `ops`: FLOPs and minimum HBM bytes of each operator from the model shape.
- `cost_model`: `get_predictor("roofline" | "table", gpu, model, **kw) -> Predictor` with `op_cost(...)`
  and the step helpers `prefill_step_ms`, `decode_nonattn_ms`, `decode_attn_ms`, `kv_transfer_ms`,
  `offload_layer_roundtrip_ms`; `OpCost` carries time, work and utilization fractions.
- `roofline`, `table`: the two predictors (created lazily through the registry).
- `bounds`: `compute_bounds(BoundsInput) -> Bounds` (OB_mem, OB_comp, OB, B_TPOT, B_max, what binds).
- `admission`: `admit` (C1, C2), `LiveStats`, `RequestInfo`, `Decision`, and `make_policy(spec)` for
  `never`, `always`, `ratio:F`, `auto`.
- `explain`: `python -m adrenaline_sgl.scheduler.explain --model llama2-13b --gpu a100-80g [--json]`.
"""
