//! Scanner wire protocol shared by the Worker, the Lambda scanners and the embedded server.
