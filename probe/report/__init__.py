"""Reports: validity checks, the answer, sentences and number formats, figures, and the HTML page."""
