//! The router and the edits, on users in memory and a users file in a temporary directory.
