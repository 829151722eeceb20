"""`make chaos`: load and fault replay against the CPU demo stack, with figures (docs/chaos.md).

    python -m adrenaline_sgl.tools.chaos [--quick] [--out results/chaos/<stamp>] [--budget-s S]

Modules: `run` (CLI, phase order, time budget, exit code), `stack` (the demo stack with fault injection:
processes, kills, restarts, health, KV and load probes), `traffic` (requests and how each was answered),
`cases` (request bodies: valid mixes, malformed ones), `phases` (one function per phase), `sockets`
(listening sockets of a process from /proc), `figures` (what is counted and printed), `reap` (kill what a run
left behind, for the Make target's trap). Issue 18 lists the defects these phases replay.
"""
