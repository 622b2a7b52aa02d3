"""loradag's DVC stages: one module per stage (stages/<stage>.py); the code they share is in stages/lib/."""
