"""The experiments' options, one Sacred ingredient per concern: `dataset`, `episodes`, `model`,
`optimisation`, `runtime`, `evaluation`. Each module holds its ingredient's config scope (the
defaults and what follows from them), the value rules of its options and the hook that checks
them once, when the config is assembled."""
