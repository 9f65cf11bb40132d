"""Studies: each a typed Spec (YAML-loadable, defaults that run on the built-in model) and run(spec, out)."""

from iclft.studies import convergence, dual_view, implicit_patterns

# name -> (spec class, --quick overrides, run function)
REGISTRY = {
    "convergence": (convergence.ConvergenceSpec, convergence.QUICK, convergence.run),
    "dual": (dual_view.DualSpec, dual_view.QUICK, dual_view.run),
    "implicit": (implicit_patterns.ImplicitSpec, implicit_patterns.QUICK, implicit_patterns.run),
}
