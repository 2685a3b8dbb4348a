//! The lease of a phase in the project's bucket
//! (`<phase>/_state/lease.json`): taken with `If-None-Match: *`, renewed
//! and given up with `If-Match: <etag>` (S3 conditional writes), so two
//! controllers never both believe they hold it. The stop request is
//! `<phase>/_state/stop.json` beside it.

use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;

use super::config::Clients;
use super::error::describe;
use super::layout;
use crate::campaign::lease::{BoxFut, LeaseDoc, LeaseStore, StopRequest};

pub struct S3Lease {
    pub c: Clients,
    pub bucket: String,
    pub phase: String,
}

/// A conditional write that lost: someone else's version is there (412),
/// or another conditional write on the key was under way (409).
fn lost<E>(e: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> bool {
    matches!(
        e.raw_response().map(|r| r.status().as_u16()),
        Some(412) | Some(409)
    )
}

impl S3Lease {
    fn key(&self) -> String {
        layout::lease_key(&self.phase)
    }

    async fn put(&self, doc: &LeaseDoc, etag: Option<&str>) -> Result<Option<String>, String> {
        let body = serde_json::to_vec_pretty(doc).map_err(|e| e.to_string())?;
        let req = self
            .c
            .s3
            .put_object()
            .bucket(&self.bucket)
            .key(self.key())
            .content_type("application/json")
            .body(ByteStream::from(body));
        let req = match etag {
            Some(t) => req.if_match(t),
            None => req.if_none_match("*"),
        };
        match req.send().await {
            Ok(out) => Ok(Some(out.e_tag().unwrap_or_default().to_string())),
            Err(e) if lost(&e) => Ok(None),
            Err(e) => Err(describe(&e)),
        }
    }
}

impl LeaseStore for S3Lease {
    fn read(&self) -> BoxFut<'_, Result<Option<(LeaseDoc, String)>, String>> {
        Box::pin(async move {
            match self
                .c
                .s3
                .get_object()
                .bucket(&self.bucket)
                .key(self.key())
                .send()
                .await
            {
                Ok(o) => {
                    let etag = o.e_tag().unwrap_or_default().to_string();
                    let bytes = o.body.collect().await.map_err(|e| e.to_string())?;
                    let doc: LeaseDoc =
                        serde_json::from_slice(&bytes.into_bytes()).map_err(|e| {
                            format!("s3://{}/{} is not a lease: {e}", self.bucket, self.key())
                        })?;
                    Ok(Some((doc, etag)))
                }
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
                Err(e) => Err(describe(&e)),
            }
        })
    }

    fn create<'a>(&'a self, doc: &'a LeaseDoc) -> BoxFut<'a, Result<Option<String>, String>> {
        Box::pin(self.put(doc, None))
    }

    fn replace<'a>(
        &'a self,
        doc: &'a LeaseDoc,
        etag: &'a str,
    ) -> BoxFut<'a, Result<Option<String>, String>> {
        Box::pin(self.put(doc, Some(etag)))
    }

    fn release<'a>(&'a self, etag: &'a str) -> BoxFut<'a, Result<(), String>> {
        Box::pin(async move {
            match self
                .c
                .s3
                .delete_object()
                .bucket(&self.bucket)
                .key(self.key())
                .if_match(etag)
                .send()
                .await
            {
                Ok(_) => Ok(()),
                // someone else's now: not ours to remove
                Err(e) if lost(&e) => Ok(()),
                Err(e) => Err(describe(&e)),
            }
        })
    }

    fn stop_request(&self) -> BoxFut<'_, Option<StopRequest>> {
        Box::pin(async move {
            let key = layout::stop_key(&self.phase);
            let bytes = super::s3::get(&self.c, &self.bucket, &key).await.ok()??;
            serde_json::from_slice(&bytes).ok()
        })
    }

    fn request_stop<'a>(&'a self, req: &'a StopRequest) -> BoxFut<'a, Result<(), String>> {
        Box::pin(async move {
            let body = serde_json::to_vec_pretty(req).map_err(|e| e.to_string())?;
            super::s3::put(&self.c, &self.bucket, &layout::stop_key(&self.phase), body)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn clear_stop(&self) -> BoxFut<'_, ()> {
        Box::pin(async move {
            let _ = self
                .c
                .s3
                .delete_object()
                .bucket(&self.bucket)
                .key(layout::stop_key(&self.phase))
                .send()
                .await;
        })
    }

    fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key())
    }
}
