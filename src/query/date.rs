//! ISO 8601 date-times: the strict parameter grammar and the lenient upstream reader.
