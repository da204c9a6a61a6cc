"""The platform's parts, one construct each; the stacks compose them and wire grants."""
