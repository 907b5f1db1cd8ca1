"""Asset factories: each turns one model of a team spec into software-defined assets."""
