"""Repository repair: a model's answer turned into a patch (`patch`), and a failed attempt turned into a
category and the next prompt (`reflection`)."""
