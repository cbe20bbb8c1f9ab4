"""``python -m ddad_bundle.deploy -i <input> -o <output> -m <model.ts>``: run the Deploy app."""

from ddad_bundle.deploy.app import main

if __name__ == "__main__":
    main()
