"""Studies: each a typed Spec (YAML-loadable, defaults that run on the built-in model) and run(spec, out)."""

from iclft.studies import convergence, dual_view, implicit_patterns

# name -> (spec class, presets over the class defaults, run function). "default" is the class defaults: sized
# for a laptop; "paper" is the papers' scale; "quick" is the test preset.
REGISTRY = {
    "convergence": (convergence.ConvergenceSpec, {"quick": convergence.QUICK, "paper": convergence.PAPER},
                    convergence.run),
    "dual": (dual_view.DualSpec, {"quick": dual_view.QUICK, "paper": dual_view.PAPER}, dual_view.run),
    "implicit": (implicit_patterns.ImplicitSpec, {"quick": implicit_patterns.QUICK, "paper": implicit_patterns.PAPER},
                 implicit_patterns.run),
}
PRESETS = ("default", "quick", "paper")
