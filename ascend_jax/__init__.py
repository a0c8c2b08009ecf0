"""ascend_jax: simulate Ascend AIC/AIV resource groups and AI CPU communication operators in JAX."""
