from lightning_prune.demo.main import main

main()
