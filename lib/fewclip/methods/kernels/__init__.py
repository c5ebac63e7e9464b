"""Fast kernels of the cache methods, each equal to a plain formula stated in its method.

- :mod:`.cache`: the cache kernel exp(-beta (1 - A)) in one allocation, value products
  as per-class sums, their written-out gradient, several betas at once (Tip-Adapter,
  DualAdapter, APE);
- :mod:`.residual_keys`: affinities with keys adapted by a per-class residual without
  forming them, and the pseudo-negative keys' products from the keys' (DualAdapter);
- :mod:`.dual`: DualAdapter's fast forward, ARL's and the adapted classifiers' written-out
  gradients, the consistency loss in one product, the stacked narrow products;
- :mod:`.search`: the grid search's candidate pruning and alpha intervals (all methods
  searched by :func:`fewclip.methods.search.count_correct`).

Which kernel earns its place, with measurements, is in
``docs/design/dual_adapter_kernels.md``; each kernel's docstring names its equality test.
"""
