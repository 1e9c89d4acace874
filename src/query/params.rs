//! Query-string and path-parameter validation and normalisation.
