"""Studies: each a typed Spec (YAML-loadable, defaults that run on the built-in model) and run(spec, out)."""

from iclft.studies import convergence

# name -> (spec class, --quick overrides, run function)
REGISTRY = {
    "convergence": (convergence.ConvergenceSpec, convergence.QUICK, convergence.run),
}
