"""Training plumbing around Lightning: LR schedules, callbacks, atomic checkpoint writes."""
