"""The GPU campaign: one prepared command that measures every GPU claim of the project on a lent GPU machine
(`campaign.sh`, `run.py`, one module per step in `steps/`), the bundle it carries there (`bundle.py`,
`make gpu-bundle`) and the import of its results into committed profiles and docs (`importer.py`,
`tables.py`, `make gpu-import`). README.md says how to use it."""
