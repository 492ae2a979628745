"""Every figure and trajectory export: loop sweeps (``sweeps``: metric vs S and vs compute), the experiments'
plots (``experiment_plots``), the denoising trajectory as a self-contained HTML page (``trajectory_html``) or a
strip of frames / GIF (``trajectory_figure``), and the viewer's renderer and event encoding shared with
``loopmdm serve`` (``assets``, ``events``)."""
