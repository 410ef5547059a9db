"""The OS jail for model-written code (bubblewrap, seccomp, rlimits, cgroups), for the agent and eval."""
