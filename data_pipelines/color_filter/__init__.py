"""CoLoR-Filter data selection (Brandfonbrener et al., 2024): a multi-domain
offline pool, score storage, selection by conditional loss reduction (in
process and on Apache Beam), baselines and seqio tasks over the selections."""
