//! The tests' images: `backroom_integration::ociimage`, each with a layer of its own (tests
//! running side by side then share no snapshot), pushed to the loopback test registry.

pub struct TestImage(pub backroom_integration::ociimage::TestImage);

impl TestImage {
    pub fn busybox(cmd: &[&str], page: &str) -> Self {
        TestImage(backroom_integration::ociimage::TestImage::busybox(
            cmd,
            page,
            &super::unique("image"),
        ))
    }

    pub fn web(version: &str) -> Self {
        TestImage(backroom_integration::ociimage::TestImage::web(version, &super::unique("image")))
    }

    pub fn digest(&self) -> String {
        self.0.digest()
    }

    /// Pushes it to the loopback test registry as `repo:tag`; returns `127.0.0.1:5000/repo:tag@digest`.
    pub async fn push(&self, repo: &str, tag: &str) -> String {
        self.0.push_to(super::REGISTRY, repo, tag).await
    }

    pub fn write_archive(&self, path: &std::path::Path, name: &str) {
        self.0.write_archive(path, name)
    }
}
