"""One module per campaign step, each `python -m experiments.gpu_campaign.steps.NAME --out DIR --budget-s S
[--smoke] [--bundle DIR]`: it writes its files and a `status.json` into DIR, stays within S seconds, and in
`--smoke` mode (CPU rehearsal) runs a tiny CPU stand-in or records why it cannot ("skipped: no GPU")."""
