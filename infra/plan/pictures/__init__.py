"""Pictures of a plan (topology, cost against budget) as SVG, drawn from the resources the program would create."""
