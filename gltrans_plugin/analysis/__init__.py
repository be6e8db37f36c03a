"""Looking at a model and its runs: FLOPs per module, attention maps, ranked-list pictures and
training curves (each module imports matplotlib / fvcore only when used by a tool)."""
