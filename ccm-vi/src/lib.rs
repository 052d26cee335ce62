//! VI Architecture semantics over ccm-verbs, with slam connect.
