"""Studies: each a typed Spec (YAML-loadable, defaults that run on the built-in model) and a `Study`
(studies/protocol.py) that `run_study` runs; iclft.registry lists them with their reports."""

# "default" is the class defaults: sized for a laptop; "paper" is the papers' scale; "quick" is the test preset.
PRESETS = ("default", "quick", "paper")
