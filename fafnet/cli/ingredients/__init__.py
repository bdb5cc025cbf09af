"""The experiments' options, one Sacred ingredient per concern: `dataset`, `episodes`, `model`,
`optimisation`, `runtime`, `evaluation`. Each module holds its ingredient's config scope (the
defaults and what follows from them) and the rules of its options (`CHECKS`, one entry per
option, and a rules function across options), checked once when the config is assembled
(`base.validate_on_assembly`)."""
